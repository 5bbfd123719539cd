#!/bin/bash
# The finished 40-epoch detector: evaluated on test once (its best epoch chosen on
# validation), exported with its test figures and intervals, then the fusion with the shipped
# classifier refitted on validation, into a candidate models folder (runs/models-det40).
# What ships is decided on validation. RUN, M (the models folder), F (the fusion's results) and
# V (the version) may be set for another detector run (results/yolov8-effl0-384-indomain), N
# (the exported name) for another backbone (results/yolov8-effl2-384-indomain).
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${RUN:-runs/yolov8-effl0-384-e40}; D=${DATA:-/work/shared/data/FracAtlas}; B=./target/release/fv-train
M=${M:-runs/models-det40}; N=${N:-yolov8-effl0-fracatlas}; V=${V:-2026.12.07}; C=efficientnet-lite0-fracatlas
F=${F:-results/fusion-effl0-384-shift-det40}
rm -rf $M; mkdir -p $M
cp models/$C.onnx models/$C.json $M/
time $B eval --run $R --data $D --split test
time $B export --run $R --name $N --version $V --data $D --out $M
time $B fuse --classifier $M/$C.json --detector $M/$N.json --run results/effl0-384-shift \
  --data $D --out $F --write
time $B expect --classifier $M/$C.json --predictions $F/predictions.csv --prevalence 0.176
time $B intervals --classifier $M/$C.json --predictions $F/predictions.csv
