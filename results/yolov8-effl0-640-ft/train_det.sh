#!/bin/bash
# The detector issue's resolution lever, one step further and longer: the 512-px fine-tune's
# best weights (results/yolov8-effl0-512-ft, kept there in f16; test 0.442 / 0.160, the best
# yet, but level with the shipped detector on validation) go on at 640 px, the study's size,
# where the median box's long side is ~45 px, for 12 epochs at the 512-px run's learning rate
# (mosaic off for the last 3). Each epoch is about 1.6 times a 512-px one.
# Spans sessions: before a stop `fv-train carry save --run runs/yolov8-effl0-640-ft` and
# commit; anywhere after: `fv-train carry resume checkpoints/yolov8-effl0-640-ft -- --data DIR`.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=${DATA:-/work/shared/data/FracAtlas}
W=results/yolov8-effl0-512-ft/best.safetensors.gz
exec nice -n ${NICE:-10} ./runs/fv-train-det detect --data "$D" --model yolov8-effl0 --weights $W \
  --image-size 640 --epochs 12 --lr 0.0005 --warmup-epochs 0.5 --batch-size 8 --close-mosaic 3 \
  --negatives 300 --ema 0.999 --checkpoint-minutes 10 --no-progress --out runs/yolov8-effl0-640-ft
