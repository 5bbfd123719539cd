#!/bin/bash
# The in-domain + EMA detector, once chosen on validation (select.sh; RUN=the chosen candidate,
# e.g. runs/yolov8-effl0-384-indomain-avg10): evaluated on test once, exported, and the fusion
# with the shipped classifier refitted on validation, by the 40-epoch run's finish.sh, into
# runs/models-det-indomain. What ships is decided on validation, fixed before test is read: the
# detector if its rule (0.1 mAP50 + 0.9 mAP50-95) passes the shipped one's 0.240, and the fusion
# with it if its 5-fold log loss is below the shipped fusion's 0.300.
set -euo pipefail
cd "$(dirname "$0")/../.."
M=runs/models-det-indomain F=results/fusion-effl0-384-shift-indomain V=${V:-2026.12.07.2} \
  exec results/yolov8-effl0-384-e40/finish.sh
