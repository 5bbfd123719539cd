#!/bin/bash
# Candidates for the shipped detector, each read on validation only: the best epoch as the
# run chose it (its metrics.json after `eval`), and the means of the last 5 and 10 epochs'
# weights (`fv-train average`; each epoch's last.safetensors kept as it finished).
set -euo pipefail
cd "$(dirname "$0")/../.."
R=runs/yolov8-effl0-384-e40; E=runs/yolov8-effl0-384-e40-epochs
D=${DATA:-/work/shared/data/FracAtlas}; B=./target/release/fv-train
O=results/yolov8-effl0-384-e40/select
mkdir -p $O
for k in 5 10; do
  C=$R-avg$k; rm -rf $C; mkdir -p $C
  cp $R/task $R/config.json $R/command.txt $R/git_commit.txt $R/train_summary.json $R/state.json $C/
  $B average --out $C/best.safetensors $(seq -f "$E/e%g.safetensors" $((41 - k)) 40)
  # The manifest's training command says how these weights were made.
  echo "$(cat $R/command.txt) && fv-train average --out best.safetensors <the last.safetensors of epochs $((41 - k))-40>" > $C/command.txt
  $B eval --run $C --data $D --split valid
  cp $C/metrics.json $O/avg$k-valid.json
done
C=$R-best; rm -rf $C; mkdir -p $C
cp $R/task $R/config.json $R/best.safetensors $C/
$B eval --run $C --data $D --split valid
cp $C/metrics.json $O/best-valid.json
for f in $O/*-valid.json; do
  python3 -c "import json,sys; m=json.load(open('$f'))['valid']; print('$f', round(m['map50'],4), round(m['map50_95'],4), 'fitness', round(0.1*m['map50']+0.9*m['map50_95'],4), m.get('map50_interval'))"
done
