#!/bin/bash
# yolov8-effl0 at 512 px with 400 non-fractured negatives; resumable (pass --resume).
cd /work/main
exec nice -n 10 ./runs/fv-train-det detect --data /work/shared/data/FracAtlas --model yolov8-effl0 \
  --image-size 512 --epochs 20 --batch-size 8 --close-mosaic 4 --negatives 400 \
  --checkpoint-minutes 10 --no-progress --out runs/yolov8-effl0-512-neg "$@"
