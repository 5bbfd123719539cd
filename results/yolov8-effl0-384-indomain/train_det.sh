#!/bin/bash
# The 40-epoch detector's recipe (results/yolov8-effl0-384-e40) with two of the detector
# issue's levers: the backbone starts from the shipped classifier's fine-tuned weights
# (in-domain: results/effl0-384-shift's best epoch, kept there in f16) instead of ImageNet
# alone, and the weights' moving average (--ema 0.999, about the last nine epochs) is what is
# validated and kept. (It was started with the f16 checkpoint widened to runs/backbones/ by a
# script; --weights now reads the .gz itself, to the same f32 values.) Spans sessions: before a stop
# `fv-train carry save --run runs/yolov8-effl0-384-indomain` and commit; anywhere after:
# `fv-train carry resume checkpoints/yolov8-effl0-384-indomain -- --data DIR`.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=${DATA:-/work/shared/data/FracAtlas}
# MODEL, W, EPOCHS and OUT change the backbone, its weights, the length and the run folder
# (results/yolov8-effl2-384-indomain/train_det.sh).
W=${W:-results/effl0-384-shift/best.safetensors.gz}
exec nice -n ${NICE:-10} ./runs/fv-train-det detect --data "$D" --model ${MODEL:-yolov8-effl0} --weights $W \
  --image-size 384 --epochs ${EPOCHS:-40} --warmup-epochs 2 --batch-size 8 --close-mosaic 5 --negatives 300 \
  --ema 0.999 --checkpoint-minutes 10 --no-progress --out ${OUT:-runs/yolov8-effl0-384-indomain} "$@"
