#!/bin/bash
# Candidates for the 512-px detector, read on validation only, fixed before any was read: the
# best epoch as the run chose it and the last epoch (both the moving average's weights). Rule:
# 0.1 mAP50 + 0.9 mAP50-95; the shipped detector reads 0.240 there. RUN and OUT may be set
# for another detector run (results/yolov8-effl0-640-ft/select.sh).
set -euo pipefail
cd "$(dirname "$0")/../.."
R=${RUN:-runs/yolov8-effl0-512-ft}; D=${DATA:-/work/shared/data/FracAtlas}; B=./target/release/fv-train
O=${OUT:-results/yolov8-effl0-512-ft/select}
mkdir -p $O
for k in best last; do
  C=$R-$k; rm -rf $C; mkdir -p $C
  cp $R/task $R/config.json $R/command.txt $R/git_commit.txt $R/state.json $C/
  cp $R/$k.safetensors $C/best.safetensors
  $B eval --run $C --data $D --split valid
  cp $C/metrics.json $O/$k-valid.json
  python3 -c "import json; m=json.load(open('$O/$k-valid.json'))['valid']; print('$k', round(m['map50'],4), round(m['map50_95'],4), 'rule', round(0.1*m['map50']+0.9*m['map50_95'],4))"
done
