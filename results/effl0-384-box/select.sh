#!/bin/bash
# Candidates from the finished box-supervised run, each read on validation only: the best
# epoch as the run chose it, and the means of the last 3 and 5 epochs' weights (`fv-train
# average`, each epoch's last.safetensors kept as it finished): a stand-in for --ema, which
# this run started without.
set -euo pipefail
cd "$(dirname "$0")/../.."
R=runs/effl0-384-box; E=runs/effl0-384-box-epochs
D=${DATA:-/work/shared/data/FracAtlas}; B=./target/release/fv-train
O=results/effl0-384-box/select
mkdir -p $O
for k in 3 5; do
  C=$R-avg$k; rm -rf $C; mkdir -p $C
  cp $R/task $R/config.json $R/command.txt $R/git_commit.txt $R/data.json $R/state.json $C/
  $B average --out $C/best.safetensors $(seq -f "$E/e%02g.safetensors" $((11 - k)) 10)
  $B eval --run $C --data $D --split valid
  cp $C/metrics.json $O/avg$k-valid.json
done
C=$R-best; rm -rf $C; mkdir -p $C
cp $R/task $R/config.json $R/command.txt $R/git_commit.txt $R/data.json $R/state.json $R/best.safetensors $C/
$B eval --run $C --data $D --split valid
cp $C/metrics.json $O/best-valid.json
