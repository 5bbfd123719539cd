#!/bin/bash
# Candidates for the Lite2 detector, read on validation only, fixed before any was read: the
# best epoch as the run chose it and the last epoch (both the moving average's weights), by
# the 512-px run's select.sh. Rule: 0.1 mAP50 + 0.9 mAP50-95; the shipped detector reads 0.240.
set -euo pipefail
cd "$(dirname "$0")/../.."
RUN=runs/yolov8-effl2-384-indomain OUT=results/yolov8-effl2-384-indomain/select \
  exec results/yolov8-effl0-512-ft/select.sh
