#!/usr/bin/env bash
# The one GPU check of issue 8: a burn CUDA training step (EfficientNet-Lite0, batch 32,
# 224 px) against burn's flex backend on the same machine's CPU, with a binary built here:
#
#   cargo build --release -p fv-train --features cuda      # here (needs no GPU to build)
#   trainer/scripts/gpu_step.sh                             # on the GPU machine (CUDA 13, nvrtc)
#
# Writes $OUT/gpu_step.jsonl (one JSON object per run) and prints it; BENCHMARKS.md takes the
# figures from there.
set -euo pipefail
BIN=${FV_TRAIN:-target/release/fv-train}
OUT=${OUT:-results}
mkdir -p "$OUT"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | tee "$OUT/gpu.txt" || true
: > "$OUT/gpu_step.jsonl"
"$BIN" bench-step --device cuda --batch 32 --image-size 224 --steps 20 --warmup 5 | tee -a "$OUT/gpu_step.jsonl"
"$BIN" bench-step --device flex --batch 32 --image-size 224 --steps 3 --warmup 1 | tee -a "$OUT/gpu_step.jsonl"
