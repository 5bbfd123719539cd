#!/bin/bash
# The classifier issue's Lite2 member: the shipped classifier's recipe (results/effl0-384-shift:
# 384 px, 10 epochs, balanced sampling, the fleet's photometric shifts, high-resolution training
# images brought to 454 px) on EfficientNet-Lite2's ImageNet weights (committed, converted
# without Python), with the weights' moving average validated and kept (--ema 0.995: about the
# last 200 steps, 2.5 epochs of ~85). Judged on validation alone and as an ensemble member with
# the shipped classifier (averaged logits), then fused with the detector.
# Spans sessions: before a stop `fv-train carry save --run runs/effl2-384-shift` and commit;
# anywhere after: `fv-train carry resume checkpoints/effl2-384-shift -- --data DIR`.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=${DATA:-/work/shared/data/FracAtlas}
exec nice -n ${NICE:-10} ./runs/fv-train-cls classify --data "$D" --model efficientnet-lite2 \
  --image-size 384 --epochs 10 --lr 4e-4 --warmup-epochs 0.5 --sampling balanced --photometric \
  --long-side 454 --ema 0.995 --checkpoint-minutes 10 --no-progress --out runs/effl2-384-shift
