#!/bin/bash
cd /work/main
exec nice -n 10 ./runs/fv-train-run3 classify --data /work/shared/data/FracAtlas --model efficientnet-lite0 \
  --image-size 512 --epochs 10 --lr 4e-4 --warmup-epochs 0.5 --sampling balanced \
  --checkpoint-minutes 10 --no-progress --out runs/effl0-512-bal "$@"
