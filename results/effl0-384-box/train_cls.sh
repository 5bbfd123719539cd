#!/bin/bash
# The shipped classifier's recipe (results/effl0-384-shift) with box supervision: each cell of
# the last feature map also learns whether a fracture box covers it (--box-weight 0.5).
# Spans sessions: before a stop `fv-train carry save --run runs/effl0-384-box` and commit;
# anywhere after: `fv-train carry resume checkpoints/effl0-384-box -- --data DIR`.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=${DATA:-/work/shared/data/FracAtlas}
exec nice -n ${NICE:-10} ./runs/fv-train-cls classify --data "$D" --model efficientnet-lite0 \
  --image-size 384 --epochs 10 --lr 4e-4 --warmup-epochs 0.5 --sampling balanced \
  --photometric --long-side 454 --box-weight 0.5 --checkpoint-minutes 10 --no-progress \
  --out runs/effl0-384-box
