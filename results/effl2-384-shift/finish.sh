#!/bin/bash
# The finished Lite2 classifier: exported as a candidate models folder beside the shipped
# detector (runs/models-effl2), the fusion refitted on validation, then the shift suite on
# validation and the scale check on the larger training images. What ships is decided on
# validation by the rule in RESULTS.md, written before this ran.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${RUN:-runs/effl2-384-shift}; D=${DATA:-/work/shared/data/FracAtlas}; B=./target/release/fv-train
M=runs/models-effl2; N=efficientnet-lite2-fracatlas; V=${V:-2026.12.07.3}
F=results/fusion-effl2-384-shift; DET=yolov8-effl0-fracatlas
rm -rf $M; mkdir -p $M
cp models/$DET.onnx models/$DET.json $M/
time $B export --run $R --name $N --version $V --out $M
time $B fuse --classifier $M/$N.json --detector $M/$DET.json --run $R --data $D --out $F --write
time $B expect --classifier $M/$N.json --predictions $F/predictions.csv --prevalence 0.176
if [ "${SHIFTS:-1}" = 1 ]; then
  time $B -v shifts --models $M --run $R --data $D --split valid --out results/shifts-effl2-384-shift-valid
fi
