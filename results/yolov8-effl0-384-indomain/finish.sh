#!/bin/bash
# The in-domain + EMA detector, once chosen on validation (select.sh): evaluated on test once,
# exported with its test figures and intervals, then the fusion with the shipped classifier
# refitted on validation, into a candidate models folder (runs/models-det-indomain). What ships
# is decided on validation (the fusion's cross-validated log loss against the shipped one's).
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${RUN:?the chosen candidate, e.g. runs/yolov8-effl0-384-indomain-avg10}; D=${DATA:-/work/shared/data/FracAtlas}; B=./target/release/fv-train
M=runs/models-det-indomain; N=yolov8-effl0-fracatlas; V=${VERSION:-2026.12.07.2}; C=efficientnet-lite0-fracatlas
F=results/fusion-effl0-384-shift-indomain
rm -rf $M; mkdir -p $M
cp models/$C.onnx models/$C.json $M/
time $B eval --run $R --data $D --split test
time $B export --run $R --name $N --version $V --data $D --out $M
time $B fuse --classifier $M/$C.json --detector $M/$N.json --run results/effl0-384-shift \
  --data $D --out $F --write
time $B expect --classifier $M/$C.json --predictions $F/predictions.csv --prevalence 0.176
time $B intervals --classifier $M/$C.json --predictions $F/predictions.csv
