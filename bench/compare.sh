#!/usr/bin/env bash
# Times a train step of the seed's SE-ResNet-50 at 64x64, batch 8, in se-compile and in PyTorch
# (CPU, same thread count), one after the other in one run. Needs `torch` importable by $PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
STEPS=${STEPS:-5}
cargo build --release --quiet
./target/release/se-compile bench models/se_resnet50.yaml --input 64 --batch-size 8 --steps "$STEPS"
"$PYTHON" bench/torch_se_resnet50.py --input 64 --batch-size 8 --steps "$STEPS" --threads "$(nproc)"
