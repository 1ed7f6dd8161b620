#!/usr/bin/env bash
# Every GPU check in one run, for a GPU machine with no cargo (GPU time is scarce), for the GPU
# network (`--device cuda`: the project's CUDA kernels, cuBLAS and cuDNN):
#   1. parity: each layer kind, CPU kernels vs the GPU network, forward and gradients, with
#      cuDNN's convolutions as chosen by default and with cuDNN for every convolution;
#   2. loss curves: se_resnet_mini trained on the bundled data on the CPU and on the GPU,
#      same seed, compared step by step;
#   3. speed: SE-ResNet-50 (the seed's) at 224x224, batch 64, train and inference images/s,
#      with a per-layer-kind time profile;
#   3b. PyTorch (timm seresnet50, same setting) on the same card, where the venv has it;
#   3c. memory: `se-compile memory --engine cuda` against the memory pool's measured peak of
#       training at 224², batches 64 and 256, and `--engine pytorch` against
#       torch.cuda.max_memory_allocated of the exported model.py at batch 64;
#   4. one summary table.
# DEVICES="cuda:1" checks another GPU.
# Usage, from the repo root after scripts/build-cuda.sh:  bash .gpu/gpu-check.sh [OUT_DIR]
set -u
cd "$(dirname "$0")/.."
OUTD=${1:-${OUT:-/tmp/gpu-check}}
mkdir -p "$OUTD"
RUN="bash .gpu/run-on-gpu.sh .gpu/se-compile"
EPOCHS=${EPOCHS:-4}
BATCH=${BATCH:-16}
STEPS=${STEPS:-10}
DEVICES=${DEVICES:-cuda}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUTD/gpu.txt"

PY=$(command -v python3 || ls "${TORCH_VENV:-/opt/torch/.venv}"/bin/python3)

echo "== 0. a GPU that does not exist: a clear error, exit 1 =="
$RUN parity --device cuda:7; echo "exit code $?"

declare -A parity_rc curves_rc bench_rc
for dev in $DEVICES; do
echo "== 1. parity (CPU kernels vs $dev) =="
$RUN parity --device "$dev" 2>&1 | tee "$OUTD/parity-$dev.txt"
parity_rc[$dev]=${PIPESTATUS[0]}
echo "== 1b. parity (CPU kernels vs $dev, cuDNN for every convolution) =="
SE_COMPILE_CONV=cudnn $RUN parity --device "$dev" 2>&1 | tee "$OUTD/parity-$dev-cudnn.txt"
[ "${PIPESTATUS[0]}" = 0 ] || parity_rc[$dev]=1
done

echo "== 2. loss curves: se_resnet_mini, $EPOCHS epochs, batch $BATCH =="
for d in cpu $DEVICES; do
  rm -rf "$OUTD/mini-$d"
  /usr/bin/time -f "$d wall %e s" $RUN train models/se_resnet_mini.yaml --device $d \
    --epochs "$EPOCHS" --batch-size "$BATCH" --out "$OUTD/mini-$d" 2>&1 | tee "$OUTD/train-$d.txt"
done
for dev in $DEVICES; do
"$PY" - "$OUTD" "$dev" <<'PY' | tee "$OUTD/curves-$dev.txt"
import csv, sys
d, dev = sys.argv[1], sys.argv[2]
def steps(dev):
    with open(f"{d}/mini-{dev}/steps.csv") as f:
        return [(int(r["epoch"]), float(r["loss"])) for r in csv.DictReader(f)]
def hist(dev):
    with open(f"{d}/mini-{dev}/history.csv") as f:
        return list(csv.DictReader(f))
a, b = steps("cpu"), steps(dev)
n = min(len(a), len(b))
print(f"steps: cpu {len(a)}, {dev} {len(b)}")
print(f"step   cpu loss   {dev} loss   |diff|")
for i in list(range(0, min(n, 10))) + list(range(10, n, max(1, n // 12))):
    print(f"{i+1:>4} {a[i][1]:>10.5f} {b[i][1]:>11.5f} {abs(a[i][1]-b[i][1]):>8.2e}")
# Identical weights and data: step 1 is a pure forward parity. Later steps drift apart (Adam
# turns rounding-level gradients of scale-invariant weights into full-size steps), so the curves
# are compared smoothed over windows of 16 steps, and per epoch.
first = abs(a[0][1] - b[0][1]) if n else float("inf")
ok = len(a) == len(b) and n > 0
W = 16
win = 0.0
for s in range(0, n - W + 1, W):
    ma = sum(x[1] for x in a[s:s + W]) / W
    mb = sum(x[1] for x in b[s:s + W]) / W
    win = max(win, abs(ma - mb) / max(abs(ma), 1e-9))
print(f"epoch  cpu mean loss  {dev} mean loss  rel diff  cpu val_acc  {dev} val_acc")
worst = 0.0
for (ha, hb) in zip(hist("cpu"), hist(dev)):
    la, lb = float(ha["loss"]), float(hb["loss"])
    rel = abs(la - lb) / max(abs(la), 1e-9)
    worst = max(worst, rel)
    print(f"{ha['epoch']:>5} {la:>14.5f} {lb:>15.5f} {rel:>9.2e} {float(ha['val_accuracy']):>12.4f} {float(hb['val_accuracy']):>13.4f}")
ok = ok and first < 1e-4 and win < 0.1 and worst < 0.05
print(f"step 1 |diff| {first:.2e} (limit 1e-4); worst {W}-step-window relative difference {win:.2e} (limit 0.1); worst epoch-mean relative difference {worst:.2e} (limit 0.05)")
print("loss curves:", "MATCH" if ok else "DIFFER")
sys.exit(0 if ok else 1)
PY
curves_rc[$dev]=${PIPESTATUS[0]}
done

echo "== 3. speed: SE-ResNet-50 224x224, batch 64 =="
for dev in $DEVICES; do
$RUN bench models/se_resnet50.yaml --device "$dev" --input 224 --batch-size 64 --steps "$STEPS" 2>&1 | tee "$OUTD/bench-$dev.txt"
bench_rc[$dev]=${PIPESTATUS[0]}
if [ "${bench_rc[$dev]}" != 0 ]; then
  echo "batch 64 failed (exit ${bench_rc[$dev]}); batch 32:"
  $RUN bench models/se_resnet50.yaml --device "$dev" --input 224 --batch-size 32 --steps "$STEPS" 2>&1 | tee -a "$OUTD/bench-$dev.txt"
fi
SE_COMPILE_PROFILE=1 $RUN bench models/se_resnet50.yaml --device "$dev" --input 224 --batch-size 64 --steps 3 2>&1 | tee "$OUTD/profile-$dev.txt"
done

echo "== 3b. PyTorch on this card (the baseline; skipped where the venv lacks torch or timm) =="
# Same setting: timm seresnet50, 224², batch 64, fp32 with TF32 off, Adam, median of 20 steps
# after 5 warm-up steps (scripts/torch_bench.py).
TPY="${TORCH_VENV:-/opt/torch/.venv}/bin/python3"
[ -x "$TPY" ] || TPY="$PY"
if "$TPY" -c "import torch, timm" 2>/dev/null; then
  timeout 120 "$TPY" "$(dirname "$0")/torch_bench.py" --input 224 --batch 64 2>&1 | tee "$OUTD/pytorch.txt"
else
  echo "no torch + timm here: the ratios below use the H200 figures of ../shared/cuda/README.md"
fi
pt_tr=$(sed -n 's/^pytorch fp32 224 64: train \([0-9.]*\) img\/s.*/\1/p' "$OUTD/pytorch.txt" 2>/dev/null)
pt_inf=$(sed -n 's/^pytorch fp32 224 64: .*inference \([0-9.]*\) img\/s.*/\1/p' "$OUTD/pytorch.txt" 2>/dev/null)
pt_src="PyTorch on this card"
if [ -z "$pt_tr" ] || [ -z "$pt_inf" ]; then pt_tr=807; pt_inf=2884; pt_src="PyTorch on the H200 (shared README)"; fi

echo "== 3c. memory: predicted vs measured =="
for dev in $DEVICES; do
  for b in 64 256; do
    timeout 120 $RUN bench models/se_resnet50.yaml --device "$dev" --input 224 --batch-size "$b" --steps 2 --phase train > "$OUTD/mem-bench-$dev-$b.txt" 2>&1
    used=$(sed -n 's/^device memory peak: \([0-9.]*\) GB in use.*/\1/p' "$OUTD/mem-bench-$dev-$b.txt")
    pred=$(timeout 60 $RUN memory models/se_resnet50.yaml --engine cuda --batch "$b" --format json | sed -n 's/^ *"peak_train_bytes": \([0-9]*\).*/\1/p')
    echo "kernel network, 224², batch $b: predicted $(awk -v p="$pred" 'BEGIN{printf "%.2f", p/1e9}') GB, measured ${used:-?} GB in use" | tee -a "$OUTD/memory.txt"
  done
done
if "$TPY" -c "import torch" 2>/dev/null; then
  rm -rf /tmp/se-mem-torch
  timeout 60 $RUN export models/se_resnet50.yaml --format pytorch -o /tmp/se-mem-torch > /dev/null
  timeout 120 "$TPY" tests/python/torch_memory.py /tmp/se-mem-torch 64 224 224 3 --cuda 2>/dev/null | tail -1 > "$OUTD/mem-torch.json"
  pred=$(timeout 60 $RUN memory models/se_resnet50.yaml --engine pytorch --batch 64 --format json | sed -n 's/^ *"train_step_bytes": \([0-9]*\).*/\1/p')
  echo "PyTorch model.py, 224², batch 64: predicted step $(awk -v p="$pred" 'BEGIN{printf "%.2f", p/1e9}') GB, measured $(cat "$OUTD/mem-torch.json")" | tee -a "$OUTD/memory.txt"
  timeout 120 "$TPY" tests/python/torch_memory.py /tmp/se-mem-torch 64 224 224 3 --cuda --bf16 2>/dev/null | tail -1 > "$OUTD/mem-torch-bf16.json"
  pred=$(timeout 60 $RUN memory models/se_resnet50.yaml --engine pytorch --precision bf16 --batch 64 --format json | sed -n 's/^ *"train_step_bytes": \([0-9]*\).*/\1/p')
  echo "PyTorch model.py, bf16 autocast, 224², batch 64: predicted step $(awk -v p="$pred" 'BEGIN{printf "%.2f", p/1e9}') GB, measured $(cat "$OUTD/mem-torch-bf16.json")" | tee -a "$OUTD/memory.txt"
fi

echo "== 4. summary =="
all=0
{
  echo "| check | result |"
  echo "|---|---|"
  for dev in $DEVICES; do
    tr=$(awk '/^train:/{print $2}' "$OUTD/bench-$dev.txt"); inf=$(awk '/^inference:/{print $2}' "$OUTD/bench-$dev.txt")
    echo "| $dev: parity, $(grep -c ' ok$' "$OUTD/parity-$dev.txt") layer kinds ok | $([ "${parity_rc[$dev]}" = 0 ] && echo pass || echo FAIL) |"
    echo "| $dev: se_resnet_mini loss curve vs cpu | $([ "${curves_rc[$dev]}" = 0 ] && echo pass || echo FAIL) |"
    echo "| $dev: SE-ResNet-50 train, 224², batch 64 | ${tr:-?} img/s; $pt_src, fp32, TF32 off: $pt_tr; ratio $(awk -v a="$tr" -v p="$pt_tr" 'BEGIN{ if (a == "") print "?"; else printf "%.2f", a/p }') |"
    echo "| $dev: SE-ResNet-50 inference, 224², batch 64 | ${inf:-?} img/s; $pt_src: $pt_inf; ratio $(awk -v a="$inf" -v p="$pt_inf" 'BEGIN{ if (a == "") print "?"; else printf "%.2f", a/p }') |"
  done
} | tee "$OUTD/summary.md"
for dev in $DEVICES; do
  [ "${parity_rc[$dev]}" = 0 ] && [ "${curves_rc[$dev]}" = 0 ] && [ "${bench_rc[$dev]}" = 0 ] || all=1
done
exit $all
