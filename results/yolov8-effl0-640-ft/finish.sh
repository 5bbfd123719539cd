#!/bin/bash
# The 640-px detector, once chosen on validation (select.sh; RUN=runs/yolov8-effl0-640-ft-best
# or -last): test once, export, the fusion refitted, by the 40-epoch run's finish.sh, into
# runs/models-det640. Ships only by the rule in RESULTS.md, fixed before test was read.
set -euo pipefail
cd "$(dirname "$0")/../.."
M=runs/models-det640 F=results/fusion-effl0-384-shift-det640 V=${V:-2026.12.08} \
  exec results/yolov8-effl0-384-e40/finish.sh
