#!/bin/bash
# Evaluate and package the finished shift-trained run as a candidate models folder beside the
# shipped one (runs/models-shift), then read it under the suite on validation and the scale
# check on the larger training images. Shipping is decided on validation.
set -euo pipefail
cd /work/main
R=runs/effl0-384-shift; D=/work/shared/data/FracAtlas; B=./target/release/fv-train
M=runs/models-shift; N=efficientnet-lite0-fracatlas; V=2026.12.06
mkdir -p $M
cp models/yolov8-effl0-fracatlas.onnx models/yolov8-effl0-fracatlas.json $M/
time $B export --run $R --name $N --version $V --out $M
time $B fuse --classifier $M/$N.json --detector $M/yolov8-effl0-fracatlas.json \
  --run $R --data $D --out results/fusion-effl0-384-shift --write
time $B expect --classifier $M/$N.json --predictions results/fusion-effl0-384-shift/predictions.csv \
  --prevalence 0.176
time $B -v shifts --models $M --run $R --data $D --split valid --out results/shifts-effl0-384-shift-valid
time $B -v shifts --models $M --run $R --data $D --split train --scale-check 454 \
  --out results/scale-effl0-384-shift
