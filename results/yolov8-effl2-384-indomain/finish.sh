#!/bin/bash
# The Lite2 detector, once chosen on validation (select.sh; RUN=runs/yolov8-effl2-384-indomain-best
# or -last): test once, export as yolov8-effl2-fracatlas, the fusion with the shipped classifier
# refitted, by the 40-epoch run's finish.sh, into runs/models-det-effl2. Ships only by the rule
# in RESULTS.md, fixed before the run started; its edge latency goes into BENCHMARKS.md first.
set -euo pipefail
cd "$(dirname "$0")/../.."
M=runs/models-det-effl2 F=results/fusion-effl0-384-shift-det-effl2 N=yolov8-effl2-fracatlas \
  V=${V:-2026.12.09} exec results/yolov8-effl0-384-e40/finish.sh
