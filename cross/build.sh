#!/usr/bin/env bash
# Builds fv-edge for the Jetson (aarch64-unknown-linux-gnu), checks the result, and, where
# qemu-user is installed, runs `fv-edge infer` on a committed sample under emulation.
#
#   cross/build.sh [--profile release|dist|dev|ci-cross] [--install-deps] [--no-run]
#
# Output: target/aarch64-unknown-linux-gnu/<profile dir>/fv-edge. Copy it with models/ to the
# board (see cross/README.md). Features: the default ones (V4L2 grabber, ONNX Runtime CPU)
# plus `tensorrt`, which is only a runtime choice: ONNX Runtime is loaded from ORT_DYLIB_PATH
# at start, so nothing NVIDIA is needed to build.
set -euo pipefail
cd "$(dirname "$0")/.."

target=aarch64-unknown-linux-gnu
profile=release
install_deps=0
run=1
while [ $# -gt 0 ]; do
  case "$1" in
    --profile) profile="$2"; shift 2 ;;
    --install-deps) install_deps=1; shift ;;
    --no-run) run=0; shift ;;
    -h|--help) sed -n '2,11p' "$0"; exit 0 ;;
    *) echo "cross/build.sh: unknown argument '$1' (see --help)" >&2; exit 2 ;;
  esac
done

# What the build needs, from Debian and rustup. --install-deps installs the missing ones
# (CI does); otherwise the script says what to install.
need=()
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v file >/dev/null || need+=(file)
ls /usr/lib/llvm-*/lib/libclang.so* /usr/lib/llvm-*/lib/libclang-[0-9]*.so* >/dev/null 2>&1 || need+=(libclang-dev)
if [ ${#need[@]} -gt 0 ]; then
  if [ "$install_deps" = 1 ]; then
    SUDO=""; [ "$(id -u)" -ne 0 ] && SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "${need[@]}"
  else
    echo "cross/build.sh: missing Debian packages: ${need[*]} (apt-get install them, or pass --install-deps)" >&2
    exit 1
  fi
fi
if ! rustup target list --installed | grep -qx "$target"; then
  if [ "$install_deps" = 1 ]; then
    rustup target add "$target"
  else
    echo "cross/build.sh: missing Rust target: rustup target add $target (or pass --install-deps)" >&2
    exit 1
  fi
fi

cargo --config cross/config.toml build --locked -p fv-edge --bin fv-edge \
  --target "$target" --profile "$profile" --features tensorrt,v4l

dir=$profile; [ "$profile" = dev ] && dir=debug
bin="${CARGO_TARGET_DIR:-target}/$target/$dir/fv-edge"
desc="$(file -b "$bin")"
echo "$bin: $desc"
case "$desc" in
  *"ELF 64-bit"*"ARM aarch64"*) ;;
  *) echo "cross/build.sh: $bin is not an ARM64 ELF executable" >&2; exit 1 ;;
esac

# JetPack 6 is Ubuntu 22.04 (glibc 2.35): the binary must not need a newer glibc than that,
# though Debian's cross glibc is 2.36.
newest="$(aarch64-linux-gnu-objdump -T "$bin" | grep -o 'GLIBC_[0-9.]*' | sort -uV | tail -1)"
echo "newest glibc symbol version needed: $newest (JetPack 6 has GLIBC_2.35)"
if [ "$(printf '%s\nGLIBC_2.35\n' "$newest" | sort -V | tail -1)" != "GLIBC_2.35" ]; then
  echo "cross/build.sh: $bin needs $newest, newer than JetPack 6's glibc 2.35" >&2
  exit 1
fi

if [ "$run" = 1 ]; then
  sample=tests/data/fracatlas-sample/images/Fractured/IMG0002322.jpg
  # The classifier alone (`--detect never`): it proves the binary runs the models on this
  # architecture; the detector under emulation at the CI profile's opt-level 0 would double
  # the step's ~10 minutes on CI's cores for the same proof.
  echo "running under qemu-aarch64: fv-edge infer --detect never $sample"
  out="$(qemu-aarch64 -L /usr/aarch64-linux-gnu "$bin" infer --models models --detect never "$sample")"
  echo "$out"
  # One JSON line with a probability and no error: the model really ran on the emulated CPU.
  echo "$out" | python3 -c '
import json, sys
r = json.loads(sys.stdin.readline())
assert "error" not in r, r["error"]
p = r["fracture_probability"]
assert 0.0 <= p <= 1.0, p
print("qemu-aarch64 infer ok: finding=%s p=%.4f" % (r["finding"], p))
'
fi
