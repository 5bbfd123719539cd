#!/bin/bash
# yolov8-effl0 at 512 px with 400 non-fractured negatives: a 10-epoch schedule (1 warm-up epoch,
# the last 2 without mosaic), ~15 min an epoch on 2 idle cores, so it spans sessions.
# Resumable: pass --resume. Run from the repository root; DATA is the FracAtlas folder.
set -euo pipefail
DATA="${DATA:?set DATA to the FracAtlas folder}"
exec nice -n 15 ./runs/fv-train-det detect --data "$DATA" --model yolov8-effl0 \
  --image-size 512 --epochs 10 --warmup-epochs 1 --batch-size 8 --close-mosaic 2 --negatives 400 \
  --checkpoint-minutes 10 --no-progress --out runs/yolov8-effl0-512-e10 "$@"
