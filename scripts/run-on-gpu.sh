#!/usr/bin/env bash
# Runs a CUDA build of se-compile on a GPU machine that has no CUDA toolkit of its own.
# Usage, from the repo root:  bash .gpu/run-on-gpu.sh .gpu/se-compile ARGS...
# Puts CUDA 13 libraries (cuBLAS, cuBLASLt, NVRTC) on LD_LIBRARY_PATH: those of a PyTorch venv
# (TORCH_VENV, default /opt/torch/.venv) or /usr/local/cuda; the driver's libcuda.so.1 comes from
# the system. The NVRTC headers dfdx needs are embedded in the binary and written at start-up;
# with COPY_HEADERS=1 this script instead copies .gpu/include to the baked path (BAKED_CUDA_ROOT).
# Adapted from ../shared/cuda/run-on-gpu.sh.
set -u
HERE=$(cd "$(dirname "$0")" && pwd)
BIN=${1:?usage: run-on-gpu.sh BINARY [ARGS...]}; shift
BAKED=${BAKED_CUDA_ROOT:-/tmp/dfdx-cuda13/root}
if [ "${COPY_HEADERS:-0}" = 1 ] && [ -d "$HERE/include" ]; then mkdir -p "$BAKED" && cp -r "$HERE/include" "$BAKED/"; fi
NV=$(ls -d "${TORCH_VENV:-/opt/torch/.venv}"/lib/python3*/site-packages/nvidia 2>/dev/null | head -1)
LIBDIRS=$(find -L "$NV" /usr/local/cuda/lib64/ -maxdepth 4 \( -name 'libcublas.so.13' -o -name 'libcublasLt.so.13' \
  -o -name 'libnvrtc.so.13' -o -name 'libnvrtc-builtins.so.13*' -o -name 'libcudnn.so.9' -o -name 'libcurand.so.10' \) -printf '%h\n' 2>/dev/null | awk '!seen[$0]++' | paste -sd: -)
export LD_LIBRARY_PATH="$LIBDIRS${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
if ldd "$BIN" | grep -q 'libcuda.so.1 => not found'; then
  D=$(find /usr/local/nvidia /usr/lib/x86_64-linux-gnu /usr/lib64 -name libcuda.so.1 -printf '%h\n' 2>/dev/null | head -1)
  [ -n "$D" ] && export LD_LIBRARY_PATH="$LD_LIBRARY_PATH:$D"
fi
nvidia-smi --query-gpu=name,compute_cap,driver_version --format=csv,noheader 2>&1 | head -1
ldd "$BIN" | grep -E 'not found' && echo "missing libraries above" >&2
exec "$BIN" "$@"
