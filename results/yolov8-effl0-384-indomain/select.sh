#!/bin/bash
# Candidates for the in-domain + EMA detector, each read on validation only, fixed before
# any was read: the best epoch as the run chose it, the average's last epoch (40), and the
# means of the average's weights at epochs 36-40 and 31-40 (each finished epoch's
# last.safetensors kept as eN.safetensors). The shipped detector (mean of epochs 31-40 of the
# ImageNet run) reads 0.534 / 0.208 there: rule 0.240. Rule: 0.1 mAP50 + 0.9 mAP50-95.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=runs/yolov8-effl0-384-indomain; E=$R-epochs
D=${DATA:-/work/shared/data/FracAtlas}; B=./target/release/fv-train
O=results/yolov8-effl0-384-indomain/select
mkdir -p $O
candidate() { # NAME WEIGHTS COMMAND-SUFFIX
  local C=$R-$1; rm -rf $C; mkdir -p $C
  cp $R/task $R/config.json $R/git_commit.txt $R/train_summary.json $R/state.json $C/
  cp "$2" $C/best.safetensors
  echo "$(cat $R/command.txt)$3" > $C/command.txt
  $B eval --run $C --data $D --split valid
  cp $C/metrics.json $O/$1-valid.json
}
candidate best $R/best.safetensors ""
candidate e40 $E/e40.safetensors ""
for k in 5 10; do
  $B average --out /tmp/avg$k.safetensors $(seq -f "$E/e%g.safetensors" $((41 - k)) 40)
  candidate avg$k /tmp/avg$k.safetensors \
    " && fv-train average --out best.safetensors <the last.safetensors of epochs $((41 - k))-40>"
done
for f in $O/*-valid.json; do
  python3 -c "import json; m=json.load(open('$f'))['valid']; print('$f', round(m['map50'],4), round(m['map50_95'],4), 'rule', round(0.1*m['map50']+0.9*m['map50_95'],4), m.get('map50_interval'))"
done
