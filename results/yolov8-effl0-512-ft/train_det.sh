#!/bin/bash
# The detector issue's resolution lever, as progressive resizing: the finished in-domain + EMA
# detector (results/yolov8-effl0-384-indomain, its shipped candidate, kept there in f16) goes on
# at 512 px, where the median box's long side is ~36 px instead of ~27, for 8 epochs at a
# quarter of the 384-px run's peak learning rate (mosaic off for the last 3). Read at 512
# without this (epoch 28's weights on validation) it gains nothing: 0.514 / 0.194 at 384,
# 0.523 / 0.175 at 480, 0.509 / 0.164 at 576; its box regression is tuned to the 384-px scale.
# Spans sessions: before a stop `fv-train carry save --run runs/yolov8-effl0-512-ft` and
# commit; anywhere after: `fv-train carry resume checkpoints/yolov8-effl0-512-ft -- --data DIR`.
set -euo pipefail
cd "$(dirname "$0")/../.."
D=${DATA:-/work/shared/data/FracAtlas}
W=results/yolov8-effl0-384-indomain/best.safetensors.gz
exec nice -n ${NICE:-10} ./runs/fv-train-det detect --data "$D" --model yolov8-effl0 --weights $W \
  --image-size 512 --epochs 8 --lr 0.0005 --warmup-epochs 0.5 --batch-size 8 --close-mosaic 3 \
  --negatives 300 --ema 0.999 --checkpoint-minutes 10 --no-progress --out runs/yolov8-effl0-512-ft
