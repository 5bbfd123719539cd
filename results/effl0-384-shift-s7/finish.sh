#!/bin/bash
# The finished seed member and the soup of it with the shipped classifier (their kept weights
# averaged tensor by tensor: one network, no cost at the edge), each exported beside the
# shipped detector (runs/models-s7, runs/models-soup), read on validation, the fusion refitted
# on validation. What ships is decided on validation by the rule in RESULTS.md, written before
# this ran; test rows are recorded, not used.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${RUN:-runs/effl0-384-shift-s7}; S=runs/effl0-384-shift-soup
D=${DATA:-/work/shared/data/FracAtlas}; B=./target/release/fv-train
N=efficientnet-lite0-fracatlas; DET=yolov8-effl0-fracatlas; V=${V:-2026.12.08}
rm -rf $S; mkdir -p $S
cp $R/task $R/config.json $R/data.json $R/command.txt $R/git_commit.txt $R/state.json $S/
time $B average --out $S/best.safetensors results/effl0-384-shift/best.safetensors.gz $R/best.safetensors
for k in s7 soup; do
  if [ $k = s7 ]; then RUNK=$R; else RUNK=$S; fi
  M=runs/models-$k; F=results/fusion-effl0-384-shift-$k
  time $B eval --run $RUNK --data $D --split valid
  cp $RUNK/metrics.json results/effl0-384-shift-s7/$k-valid.json
  rm -rf $M; mkdir -p $M
  cp models/$DET.onnx models/$DET.json $M/
  time $B export --run $RUNK --name $N --version $V --out $M
  time $B fuse --classifier $M/$N.json --detector $M/$DET.json --run $RUNK --data $D --out $F --write
  time $B expect --classifier $M/$N.json --predictions $F/predictions.csv --prevalence 0.176
  python3 results/effl2-384-shift/ensemble.py results/fusion-effl0-384-shift/predictions.csv $F/predictions.csv
  if [ "${SHIFTS:-1}" = 1 ]; then
    time $B -v shifts --models $M --run $RUNK --data $D --split valid --out results/shifts-effl0-384-shift-$k-valid
  fi
done
