#!/usr/bin/env bash
# Runs every fuzz target for a bounded time from its committed seeds, and keeps any crash
# input under fuzz/artifacts/<target>/ (copy it to fuzz/regressions/<target>/ once fixed:
# edge/tests/fuzz_regressions.rs then replays it in every `cargo test`).
#
#   fuzz/run.sh [SECONDS_PER_TARGET]      (default 60)
#
# Needs cargo-fuzz (`cargo install cargo-fuzz`). It builds with nightly-only sanitizer flags;
# on a stable toolchain RUSTC_BOOTSTRAP=1 allows them, as here.
set -euo pipefail
cd "$(dirname "$0")"
secs="${1:-60}"
export RUSTC_BOOTSTRAP=1
for t in image_decode dicom dimse manifest config; do
  mkdir -p "corpus/$t"
  cp -n seeds/"$t"/* "corpus/$t/" 2>/dev/null || true
  echo "== $t: ${secs} s"
  # -rss_limit_mb: an input that makes a parser allocate gigabytes is a finding too.
  cargo fuzz run -O "$t" "corpus/$t" -- -max_total_time="$secs" -rss_limit_mb=2048 \
    -max_len=1048576 -print_final_stats=1 2>&1 | grep -E "^(#[0-9]+.*DONE|stat::number_of_executed_units|stat::peak_rss_mb|SUMMARY|==[0-9]+==ERROR|Done)" || true
  if ls "artifacts/$t"/crash-* "artifacts/$t"/oom-* "artifacts/$t"/timeout-* >/dev/null 2>&1; then
    echo "FOUND: $(ls artifacts/$t)"; exit 1
  fi
done
echo "no crashes"
