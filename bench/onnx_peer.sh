#!/usr/bin/env bash
# The exported seed SE-ResNet-50 in onnxruntime next to `se-compile bench`, in one run:
# 224x224, batch 8, 2 threads for both (RAYON_NUM_THREADS=2 for se-compile, intra-op threads 2
# for onnxruntime). Also prints the ONNX file size and the export time.
# Usage: bench/onnx_peer.sh [STEPS]   (the Python side comes from scripts/pyenv.sh)
set -euo pipefail
cd "$(dirname "$0")/.."
STEPS=${1:-5}
PY=$(bash scripts/pyenv.sh)
cargo build --release --quiet
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
start=$(date +%s.%N)
./target/release/se-compile export models/se_resnet50.yaml --format onnx -o "$out/se_resnet50.onnx"
end=$(date +%s.%N)
echo "export: $(stat -c %s "$out/se_resnet50.onnx") bytes in $(echo "$end - $start" | bc) s (wall, whole command)"
grep -m1 "model name" /proc/cpuinfo || true
RAYON_NUM_THREADS=2 ./target/release/se-compile bench models/se_resnet50.yaml --batch-size 8 --steps "$STEPS"
"$PY" - "$out/se_resnet50.onnx" "$STEPS" <<'PY'
import sys, time
import numpy as np
import onnxruntime as ort
opts = ort.SessionOptions()
opts.intra_op_num_threads = 2
opts.inter_op_num_threads = 1
sess = ort.InferenceSession(sys.argv[1], opts, providers=["CPUExecutionProvider"])
steps = int(sys.argv[2])
x = np.random.default_rng(0).random((8, 224, 224, 3), dtype=np.float32)
name = sess.get_inputs()[0].name
sess.run(None, {name: x})  # warm-up
t = time.perf_counter()
for _ in range(steps):
    sess.run(None, {name: x})
dt = (time.perf_counter() - t) / steps
print(f"onnxruntime {ort.__version__} inference: {8 / dt:.1f} images/s ({dt * 1000:.1f} ms/batch), 2 threads")
PY
