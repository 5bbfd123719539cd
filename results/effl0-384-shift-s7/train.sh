#!/bin/bash
# The classifier issue's seed member: the shipped classifier's recipe exactly
# (results/effl0-384-shift: EfficientNet-Lite0, 384 px, 10 epochs, balanced sampling, the fleet's
# photometric shifts, high-resolution training images brought to 454 px) with another seed (7
# instead of the default 42: initialisation of the head, order, augmentation; the split keeps
# its own salt, --split-seed 42, the shipped one). Judged on validation only, alone and averaged with the shipped
# classifier (results/effl2-384-shift/ensemble.py on the two fusion runs' validation rows).
# Spans sessions: before a stop `fv-train carry save --run runs/effl0-384-shift-s7` and commit;
# anywhere after: `fv-train carry resume checkpoints/effl0-384-shift-s7 -- --data DIR`.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=${DATA:-/work/shared/data/FracAtlas}
exec nice -n ${NICE:-10} ./runs/fv-train-cls classify --data "$D" --model efficientnet-lite0 \
  --image-size 384 --epochs 10 --lr 4e-4 --warmup-epochs 0.5 --sampling balanced --photometric \
  --long-side 454 --seed 7 --split-seed 42 --checkpoint-minutes 10 --no-progress --out runs/effl0-384-shift-s7
