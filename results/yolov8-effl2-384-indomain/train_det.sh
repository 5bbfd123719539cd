#!/bin/bash
# The in-domain detector's recipe (results/yolov8-effl0-384-indomain) with the detector issue's
# last untried lever, a larger ImageNet backbone: yolov8-effl2, its backbone started from the
# Lite2 classifier's fine-tuned weights (results/effl2-384-shift's best epoch, f16), 30 epochs
# instead of 40 (the in-domain Lite0 run peaked at epoch 31 and had reached 0.2 by the rule
# at epoch 12). Spans sessions: before a stop `fv-train carry save --run
# runs/yolov8-effl2-384-indomain` and commit; anywhere after:
# `fv-train carry resume checkpoints/yolov8-effl2-384-indomain -- --data DIR`.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=${DATA:-/work/shared/data/FracAtlas}
W=results/effl2-384-shift/best.safetensors.gz
exec nice -n ${NICE:-10} ./runs/fv-train-det detect --data "$D" --model yolov8-effl2 --weights $W \
  --image-size 384 --epochs 30 --warmup-epochs 2 --batch-size 8 --close-mosaic 5 --negatives 300 \
  --ema 0.999 --checkpoint-minutes 10 --no-progress --out runs/yolov8-effl2-384-indomain "$@"
