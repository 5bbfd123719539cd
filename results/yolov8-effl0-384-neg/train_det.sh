#!/bin/bash
# yolov8-effl0 at 384 px with 300 non-fractured negatives: a 12-epoch schedule (1 warm-up epoch,
# the last 2 without mosaic), sized to finish within one ~3-hour session on 2 shared cores
# (the 512-px runs needed ~16 min an epoch and were lost between sessions twice).
# Resumable: pass --resume. Run from the repository root; DATA is the FracAtlas folder.
set -euo pipefail
DATA="${DATA:?set DATA to the FracAtlas folder}"
exec nice -n 10 ./runs/fv-train-det detect --data "$DATA" --model yolov8-effl0 \
  --image-size 384 --epochs 12 --warmup-epochs 1 --batch-size 8 --close-mosaic 2 --negatives 300 \
  --checkpoint-minutes 10 --no-progress --out runs/yolov8-effl0-384-neg "$@"
