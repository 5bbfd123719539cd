#!/bin/bash
# The in-domain detector's recipe (results/yolov8-effl0-384-indomain) with the detector issue's
# last untried lever, a larger ImageNet backbone: yolov8-effl2, its backbone started from the
# Lite2 classifier's fine-tuned weights (results/effl2-384-shift's best epoch, f16), 30 epochs
# instead of 40 (the in-domain Lite0 run peaked at epoch 31 and had reached 0.2 by the rule
# at epoch 12). Spans sessions: before a stop `fv-train carry save --run
# runs/yolov8-effl2-384-indomain` and commit; anywhere after:
# `fv-train carry resume checkpoints/yolov8-effl2-384-indomain -- --data DIR`.
# Extra flags pass on (-v shows what the backbone took).
set -euo pipefail
cd "$(dirname "$0")/../.."
MODEL=yolov8-effl2 W=results/effl2-384-shift/best.safetensors.gz EPOCHS=30 \
  OUT=runs/yolov8-effl2-384-indomain exec results/yolov8-effl0-384-indomain/train_det.sh "$@"
