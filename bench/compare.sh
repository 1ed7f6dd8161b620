#!/usr/bin/env bash
# The seed's SE-ResNet-50 (17 classes, Adam, random data) in se-compile, PyTorch
# (bench/torch_se_resnet50.py) and Keras (bench/keras_se_resnet50.py, the seed's own code), on
# the CPU with the same thread count, in three cases:
#   train 64x64 batch 32, train 224x224 batch 8, inference 224x224 batch 8.
# Every measurement is a fresh process; the three programs run interleaved, in an order that
# rotates from round to round and case to case. It prints the median images/s of each, the
# ratio of se-compile to the best peer, and the machine's sgemm rate (PyTorch `a @ b`, 3072²,
# same threads) as the limit: inference counts 2 x MACs per image, training 3 x that.
#
# It installs nothing. Give it two Python interpreters (see the README, "CPU speed"):
#   TORCH_PYTHON  one with torch           (python3 -m venv V && V/bin/pip install torch)
#   KERAS_PYTHON  one with Keras 3 + TF    (python3 -m venv K && K/bin/pip install tensorflow-cpu)
# Knobs: ROUNDS (2), STEPS (3 timed steps after one warm-up), THREADS (nproc), CASES.
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS=${ROUNDS:-2}
STEPS=${STEPS:-3}
THREADS=${THREADS:-$(nproc)}
CASES=${CASES:-"train:64:32 train:224:8 infer:224:8"}
: "${TORCH_PYTHON:?set TORCH_PYTHON to a python with torch (see the README, CPU speed)}"
: "${KERAS_PYTHON:?set KERAS_PYTHON to a python with tensorflow-cpu (see the README, CPU speed)}"
for py in "$TORCH_PYTHON" "$KERAS_PYTHON"; do
  command -v "$py" >/dev/null || { echo "error: $py not found" >&2; exit 2; }
done
"$TORCH_PYTHON" -c "import torch" 2>/dev/null || { echo "error: $TORCH_PYTHON cannot import torch" >&2; exit 2; }
"$KERAS_PYTHON" -c "import keras, tensorflow" 2>/dev/null || { echo "error: $KERAS_PYTHON cannot import keras and tensorflow" >&2; exit 2; }

cargo build --release --locked --quiet
SE=./target/release/se-compile
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
export RAYON_NUM_THREADS=$THREADS OMP_NUM_THREADS=$THREADS MKL_NUM_THREADS=$THREADS

cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')
grep -q -w avx512f /proc/cpuinfo && isa="AVX-512" || { grep -q -w avx2 /proc/cpuinfo && isa="AVX2" || isa="no AVX2"; }

sgemm=$("$TORCH_PYTHON" - "$THREADS" <<'EOF'
import sys, time, torch
torch.set_num_threads(int(sys.argv[1]))
n = 3072
a, b = torch.rand(n, n), torch.rand(n, n)
a @ b
best = 0.0
for _ in range(3):
    t = time.perf_counter(); a @ b; dt = time.perf_counter() - t
    best = max(best, 2 * n ** 3 / dt / 1e9)
print(f"{best:.1f}")
EOF
)
# SE-ResNet-50's multiply-adds per image at 224x224, from se-compile's own summary.
macs=$("$SE" summary models/se_resnet50.yaml --format json | "$TORCH_PYTHON" -c "import json,sys; print(json.load(sys.stdin)['total_macs'])")

run_one() { # prog mode size batch -> images/s on stdout
  local prog=$1 mode=$2 size=$3 batch=$4 line
  case $prog in
    se-compile) line=$("$SE" bench models/se_resnet50.yaml --input "$size" --batch-size "$batch" --steps "$STEPS" --phase "$mode") ;;
    pytorch) line=$("$TORCH_PYTHON" bench/torch_se_resnet50.py --input "$size" --batch-size "$batch" --steps "$STEPS" --threads "$THREADS" --mode "$mode") ;;
    keras) line=$("$KERAS_PYTHON" bench/keras_se_resnet50.py --input "$size" --batch-size "$batch" --steps "$STEPS" --threads "$THREADS" --mode "$mode" 2>/dev/null) ;;
  esac
  local key=train
  [ "$mode" = infer ] && key=inference
  echo "$line" | awk -v k="$key:" '$1 == k { print $2 }'
}

progs=(se-compile pytorch keras)
for ((r = 0; r < ROUNDS; r++)); do
  c=0
  for case in $CASES; do
    IFS=: read -r mode size batch <<<"$case"
    for ((i = 0; i < 3; i++)); do
      p=${progs[$(((i + r + c) % 3))]}
      v=$(run_one "$p" "$mode" "$size" "$batch")
      [ -n "$v" ] || { echo "error: $p gave no $mode figure for $size/$batch" >&2; exit 1; }
      echo "$case $p $v" >>"$out/results"
      echo "round $((r + 1)): $mode ${size}x$size batch $batch  $p  $v images/s" >&2
    done
    c=$((c + 1))
  done
done

"$TORCH_PYTHON" - "$out/results" "$sgemm" "$macs" "$THREADS" "$cpu" "$isa" "$ROUNDS" <<'EOF'
import statistics, sys
path, sgemm, macs, threads, cpu, isa, rounds = sys.argv[1:]
sgemm, macs = float(sgemm), float(macs)
res = {}
for line in open(path):
    case, prog, v = line.split()
    res.setdefault(case, {}).setdefault(prog, []).append(float(v))
print(f"CPU: {cpu} ({isa}), {threads} threads, {rounds} interleaved rounds, median images/s")
print(f"sgemm (PyTorch a @ b, 3072^2): {sgemm:.1f} GFLOP/s")
print()
print("| case | se-compile | PyTorch | Keras | se-compile / best | se-compile, % of sgemm |")
print("|---|---:|---:|---:|---:|---:|")
for case, by in res.items():
    mode, size, batch = case.split(":")
    med = {p: statistics.median(v) for p, v in by.items()}
    best = max(med["pytorch"], med["keras"])
    # MACs scale with the pixel count; training is about 3x the forward pass.
    flops = 2 * macs * (int(size) / 224) ** 2 * (3 if mode == "train" else 1)
    frac = med["se-compile"] * flops / (sgemm * 1e9)
    print(f"| {mode} {size}², batch {batch} | {med['se-compile']:.1f} | {med['pytorch']:.1f} | "
          f"{med['keras']:.1f} | {med['se-compile'] / best:.2f} | {100 * frac:.0f}% |")
EOF
