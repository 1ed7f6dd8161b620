#!/usr/bin/env bash
# Builds `se-compile` with `--features cuda` on a machine without a GPU or CUDA toolkit, using
# NVIDIA's CUDA 13.0 pip wheels (../shared/cuda/setup.sh, or the copy path given in SETUP), and
# collects what a GPU machine needs in .gpu/: the binary, the run script, the NVRTC headers.
# Usage: scripts/build-cuda.sh            (CUDA_DIR=/tmp/dfdx-cuda13 by default)
set -euo pipefail
cd "$(dirname "$0")/.."
CUDA_DIR=${CUDA_DIR:-/tmp/dfdx-cuda13}
SETUP=${SETUP:-../shared/cuda/setup.sh}
if [ ! -f "$CUDA_DIR/root/include/cuda.h" ]; then
  [ -f "$SETUP" ] || { echo "error: $SETUP not found; set SETUP=path/to/setup.sh" >&2; exit 2; }
  bash "$SETUP" "$CUDA_DIR"
fi
export CUDA_ROOT="$CUDA_DIR/root"
unset CUDA_PATH CUDA_TOOLKIT_ROOT_DIR CUDNN_LIB
# H100 / H200 (sm_90); set CUDA_COMPUTE_CAP for another GPU.
export CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
export PATH="$CUDA_ROOT/bin:$CUDA_DIR/pip/nvidia/cu13/bin:$PATH"
cargo build --release --features cuda --target-dir target/cuda
mkdir -p .gpu
cp target/cuda/release/se-compile .gpu/se-compile
cp scripts/run-on-gpu.sh scripts/gpu-check.sh scripts/gpu-speed.sh scripts/gpu-all.sh scripts/torch_bench.py .gpu/
rm -rf .gpu/include && cp -rL "$CUDA_ROOT/include" .gpu/include
rm -f .gpu/include/cuda.h
echo "built .gpu/se-compile ($(du -h .gpu/se-compile | cut -f1)); on the GPU machine: bash .gpu/gpu-all.sh (or .gpu/gpu-check.sh, .gpu/gpu-speed.sh)"
