#!/usr/bin/env bash
# One device run for a session that is lent a GPU (GPU time is scarce: about 7 minutes in all):
# scripts/gpu-check.sh (parity, loss curves, bench, profile, PyTorch) and scripts/gpu-speed.sh
# (the speed table with memory, and PyTorch's bf16 rows), each under a timeout. The run
# directories stay in /tmp; the logs and tables are copied to OUT_DIR (the device tool's $OUT),
# few files, so that all of them come back.
# Usage, on the GPU machine from the repo root after scripts/build-cuda.sh:
#   bash .gpu/gpu-all.sh [OUT_DIR]      (EPOCHS=3 CHECK_TIMEOUT=230 SPEED_TIMEOUT=300)
set -u
cd "$(dirname "$0")/.."
O=${1:-${OUT:-/tmp/gpu-all}}
mkdir -p "$O/gpu-check" "$O/speed"
echo "== gpu-check =="
EPOCHS=${EPOCHS:-3} timeout "${CHECK_TIMEOUT:-230}" bash .gpu/gpu-check.sh /tmp/gc > "$O/gpu-check.log" 2>&1
echo "gpu-check exit $?" | tee -a "$O/gpu-check.log"
cp /tmp/gc/*.txt /tmp/gc/*.md "$O/gpu-check/" 2>/dev/null
tail -8 "$O/gpu-check.log"
echo "== speed =="
ROW_TIMEOUT=${ROW_TIMEOUT:-60} timeout "${SPEED_TIMEOUT:-300}" bash .gpu/gpu-speed.sh /tmp/gs > "$O/speed.log" 2>&1
echo "gpu-speed exit $?" | tee -a "$O/speed.log"
cp /tmp/gs/* "$O/speed/" 2>/dev/null
cat /tmp/gs/speed.md 2>/dev/null
