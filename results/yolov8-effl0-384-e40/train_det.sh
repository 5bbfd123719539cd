#!/bin/bash
# yolov8-effl0 at 384 px with 300 non-fractured negatives on a 40-epoch schedule (2 warm-up
# epochs, the last 5 without mosaic): the shipped 12-epoch recipe, longer, to measure what the
# schedule's length alone gains. Spread over sessions: its compact resume point is committed
# under checkpoints/yolov8-effl0-384-e40/ and `fv-train carry resume` continues it.
# Run from the repository root; DATA is the FracAtlas folder.
set -euo pipefail
DATA="${DATA:?set DATA to the FracAtlas folder}"
exec nice -n 10 ./runs/fv-train-det detect --data "$DATA" --model yolov8-effl0 \
  --image-size 384 --epochs 40 --warmup-epochs 2 --batch-size 8 --close-mosaic 5 --negatives 300 \
  --checkpoint-minutes 10 --no-progress --out runs/yolov8-effl0-384-e40 "$@"
