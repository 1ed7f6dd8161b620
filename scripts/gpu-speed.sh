#!/usr/bin/env bash
# The GPU speed table of the GPU chapter: the seed's SE-ResNet-50 on se-compile's GPU network
# against PyTorch + timm `seresnet50` on the same card, in one run, row by row:
#   input, batch | se-compile train | PyTorch train | ratio | se-compile infer | PyTorch infer |
#   ratio | train memory: se-compile pool peak reserved / PyTorch max reserved
# Both fp32 with TF32 off, Adam; then PyTorch in bf16 (BF16_ROWS). Every command has a timeout,
# so a slow row costs only itself.
# Usage, on the GPU machine from the repo root after scripts/build-cuda.sh:
#   bash .gpu/gpu-speed.sh [OUT_DIR]      ROWS="224:32 224:64" DEVICE=cuda STEPS=10
set -u
cd "$(dirname "$0")/.."
OUTD=${1:-${OUT:-/tmp/gpu-speed}}
mkdir -p "$OUTD"
RUN="bash .gpu/run-on-gpu.sh .gpu/se-compile"
ROWS=${ROWS:-224:32 224:64 224:128 224:256 64:32 64:256}
DEVICE=${DEVICE:-cuda}
STEPS=${STEPS:-10}
T=${ROW_TIMEOUT:-120}
TPY="${TORCH_VENV:-/opt/torch/.venv}/bin/python3"
HERE=$(dirname "$0")
table="$OUTD/speed.md"
{
  echo "| input, batch | se-compile train | PyTorch train | ratio | se-compile infer | PyTorch infer | ratio | train memory: se-compile / PyTorch (GB reserved) |"
  echo "|---|---:|---:|---:|---:|---:|---:|---|"
} > "$table"
for row in $ROWS; do
  inp=${row%%:*}; b=${row##*:}
  f="$OUTD/se-$inp-$b.txt"; p="$OUTD/pt-$inp-$b.txt"
  timeout "$T" $RUN bench models/se_resnet50.yaml --device "$DEVICE" --input "$inp" \
    --batch-size "$b" --steps "$STEPS" > "$f" 2>&1; echo "se-compile $inp $b: exit $?" >> "$f"
  timeout "$T" "$TPY" "$HERE/torch_bench.py" --input "$inp" --batch "$b" > "$p" 2>&1
  tr=$(awk '/^train:/{print $2}' "$f"); inf=$(awk '/^inference:/{print $2}' "$f")
  mem=$(sed -n 's/^device memory peak: .* GB in use, \([0-9.]*\) GB reserved.*/\1/p' "$f")
  ptr=$(sed -n 's/.*: train \([0-9.]*\) img\/s.*/\1/p' "$p"); pinf=$(sed -n 's/.*inference \([0-9.]*\) img\/s.*/\1/p' "$p")
  pmem=$(sed -n 's/.*train max reserved \([0-9.]*\) GB.*/\1/p' "$p")
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "" || b == "" || b == 0) print "?"; else printf "%.2f", a / b }'; }
  echo "| ${inp}², $b | ${tr:-?} | ${ptr:-?} | $(ratio "$tr" "$ptr") | ${inf:-?} | ${pinf:-?} | $(ratio "$inf" "$pinf") | ${mem:-?} / ${pmem:-?} |" >> "$table"
  tail -1 "$table"
done
# bf16: PyTorch with autocast and channels_last (timm's benchmark setting). se-compile has no
# --precision bf16 yet (issue: GPU speed), so its column says so instead of a number.
BF16_ROWS=${BF16_ROWS:-224:64}
{
  echo
  echo "| bf16, input, batch | se-compile train | PyTorch train | se-compile infer | PyTorch infer | PyTorch train memory (GB reserved) |"
  echo "|---|---:|---:|---:|---:|---|"
} >> "$table"
for row in $BF16_ROWS; do
  inp=${row%%:*}; b=${row##*:}
  p="$OUTD/pt-bf16-$inp-$b.txt"
  timeout "$T" "$TPY" "$HERE/torch_bench.py" --input "$inp" --batch "$b" --precision bf16 > "$p" 2>&1
  ptr=$(sed -n 's/.*: train \([0-9.]*\) img\/s.*/\1/p' "$p"); pinf=$(sed -n 's/.*inference \([0-9.]*\) img\/s.*/\1/p' "$p")
  pmem=$(sed -n 's/.*train max reserved \([0-9.]*\) GB.*/\1/p' "$p")
  echo "| ${inp}², $b | no --precision bf16 yet | ${ptr:-?} | no --precision bf16 yet | ${pinf:-?} | ${pmem:-?} |" >> "$table"
done
echo; cat "$table"
