#!/usr/bin/env bash
# The GPU speed table of the GPU chapter: the seed's SE-ResNet-50 on se-compile's GPU network
# against PyTorch + timm `seresnet50` on the same card, in one run, row by row:
#   input, batch | se-compile train | PyTorch train | ratio | se-compile infer | PyTorch infer |
#   ratio | train memory: se-compile pool peak reserved / PyTorch max reserved
# Both fp32 with TF32 off, Adam; then se-compile with SE_COMPILE_FUSE=0 (AB_ROWS: what the
# kernel network's own plan passes gain), then PyTorch in bf16 (BF16_ROWS). Every command has a
# timeout, so a slow row costs only itself.
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
: > "$table"
# A table's header: a blank line, the column names, the alignment row.
header() { printf '\n%s\n%s\n' "$1" "$2" >> "$table"; }
# se-compile's bench of one row into file $1 (input $2, batch $3), its exit code at the end.
se_bench() {
  timeout "$T" $RUN bench models/se_resnet50.yaml --device "$DEVICE" --input "$2" \
    --batch-size "$3" --steps "$STEPS" > "$1" 2>&1
  echo "se-compile ${SE_COMPILE_FUSE:+SE_COMPILE_FUSE=$SE_COMPILE_FUSE }$2 $3: exit $?" >> "$1"
}
header "| input, batch | se-compile train | PyTorch train | ratio | se-compile infer | PyTorch infer | ratio | train memory: se-compile / PyTorch (GB reserved) |" \
  "|---|---:|---:|---:|---:|---:|---:|---|"
for row in $ROWS; do
  inp=${row%%:*}; b=${row##*:}
  f="$OUTD/se-$inp-$b.txt"; p="$OUTD/pt-$inp-$b.txt"
  se_bench "$f" "$inp" "$b"
  timeout "$T" "$TPY" "$HERE/torch_bench.py" --input "$inp" --batch "$b" > "$p" 2>&1
  tr=$(awk '/^train:/{print $2}' "$f"); inf=$(awk '/^inference:/{print $2}' "$f")
  mem=$(sed -n 's/^device memory peak: .* GB in use, \([0-9.]*\) GB reserved.*/\1/p' "$f")
  ptr=$(sed -n 's/.*: train \([0-9.]*\) img\/s.*/\1/p' "$p"); pinf=$(sed -n 's/.*inference \([0-9.]*\) img\/s.*/\1/p' "$p")
  pmem=$(sed -n 's/.*train max reserved \([0-9.]*\) GB.*/\1/p' "$p")
  ratio() { awk -v a="$1" -v b="$2" 'BEGIN{ if (a == "" || b == "" || b == 0) print "?"; else printf "%.2f", a / b }'; }
  echo "| ${inp}², $b | ${tr:-?} | ${ptr:-?} | $(ratio "$tr" "$ptr") | ${inf:-?} | ${pinf:-?} | $(ratio "$inf" "$pinf") | ${mem:-?} / ${pmem:-?} |" >> "$table"
  tail -1 "$table"
done
# What the kernel network's own passes gain (activations in the kernels before them, SE tails
# as one op): the same rows again with SE_COMPILE_FUSE=0, the spec's layers one by one.
AB_ROWS=${AB_ROWS:-224:64}
header "| input, batch | train: own passes / SE_COMPILE_FUSE=0 | inference: own passes / SE_COMPILE_FUSE=0 |" \
  "|---|---:|---:|"
for row in $AB_ROWS; do
  inp=${row%%:*}; b=${row##*:}
  f="$OUTD/se-$inp-$b.txt"; g="$OUTD/se-nofuse-$inp-$b.txt"
  [ -f "$f" ] || se_bench "$f" "$inp" "$b"
  SE_COMPILE_FUSE=0 se_bench "$g" "$inp" "$b"
  tr=$(awk '/^train:/{print $2}' "$f"); inf=$(awk '/^inference:/{print $2}' "$f")
  tr0=$(awk '/^train:/{print $2}' "$g"); inf0=$(awk '/^inference:/{print $2}' "$g")
  echo "| ${inp}², $b | ${tr:-?} / ${tr0:-?} | ${inf:-?} / ${inf0:-?} |" >> "$table"
  tail -1 "$table"
done
# bf16: PyTorch with autocast and channels_last (timm's benchmark setting). se-compile has no
# --precision bf16 yet (issue: GPU speed), so its column says so instead of a number.
BF16_ROWS=${BF16_ROWS:-224:64}
header "| bf16, input, batch | se-compile train | PyTorch train | se-compile infer | PyTorch infer | PyTorch train memory (GB reserved) |" \
  "|---|---:|---:|---:|---:|---|"
for row in $BF16_ROWS; do
  inp=${row%%:*}; b=${row##*:}
  p="$OUTD/pt-bf16-$inp-$b.txt"
  timeout "$T" "$TPY" "$HERE/torch_bench.py" --input "$inp" --batch "$b" --precision bf16 > "$p" 2>&1
  ptr=$(sed -n 's/.*: train \([0-9.]*\) img\/s.*/\1/p' "$p"); pinf=$(sed -n 's/.*inference \([0-9.]*\) img\/s.*/\1/p' "$p")
  pmem=$(sed -n 's/.*train max reserved \([0-9.]*\) GB.*/\1/p' "$p")
  echo "| ${inp}², $b | no --precision bf16 yet | ${ptr:-?} | no --precision bf16 yet | ${pinf:-?} | ${pmem:-?} |" >> "$table"
done
echo; cat "$table"
