#!/bin/bash
# Evaluate, export and fuse the finished 384-px run (commands as in RESULTS.md).
set -euo pipefail
cd /work/main
R=runs/effl0-384-bal; D=/work/shared/data/FracAtlas; B=./target/release/fv-train
V=2026.12.02; N=efficientnet-lite0-fracatlas
time $B eval --run $R --data $D --split test
time $B export --run $R --name $N --version $V --out models
time $B export --run $R --name $N --version $V --precision int8 --data $D --out models
time $B fuse --classifier models/$N.json --detector models/yolov8-effl0-fracatlas.json \
  --run $R --data $D --out results/fusion-effl0-384 --write
time $B fuse --classifier models/$N-int8.json --detector models/yolov8-effl0-fracatlas-int8.json \
  --run $R --data $D --out results/fusion-effl0-384-int8 --write
