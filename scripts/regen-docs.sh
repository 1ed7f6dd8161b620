#!/usr/bin/env bash
# Regenerates, with the current code, every picture and log under docs/src/ that a CPU machine
# can make (about 2 minutes on 2 cores after the build):
#   1. docs/src/fashion-mnist-full/accuracy.png and loss.png: redrawn from that run's
#      history.json by examples/replot.rs (the plotting code `train` uses). The history itself
#      is a 66-minute run on the full Fashion-MNIST (60,000 images); with FMNIST=DIR (the data
#      set extracted by ../shared/data/extract.sh) the run is trained again first and its
#      history.csv, history.json and config.json replace the kept ones.
#   2. docs/src/excitation-analysis/trained.png and untrained.png, and the table between the
#      regen-docs markers of docs/src/analysis.md: se_resnet_mini trained 3 epochs on the
#      bundled data (the README's command) and its seeded initial weights
#      (examples/initial_weights.rs), analysed on the bundled test images.
# Not regenerated here (each chapter gives the date, commit and machine of these):
#   - docs/src/gpu-check/: needs an NVIDIA GPU (scripts/build-cuda.sh here, then
#     `bash .gpu/gpu-check.sh OUT_DIR` on the GPU machine; copy OUT_DIR's files over these);
#   - the GPU speed tables of gpu.md (scripts/gpu-speed.sh on the GPU machine);
#   - the CPU speed tables of measurements.md (bench/compare.sh: needs PyTorch and Keras and
#     about an hour; its printed table is copied into the chapter by hand).
# Usage, from anywhere:  scripts/regen-docs.sh
#   PROFILE=dev reuses a debug build instead of building --release (the figures are the same).
set -euo pipefail
cd "$(dirname "$0")/.."
PROFILE=${PROFILE:-release}
cargo build --profile "$PROFILE" --bin se-compile --example replot --example initial_weights
dir=$PROFILE; [ "$PROFILE" = dev ] && dir=debug
BIN=${CARGO_TARGET_DIR:-target}/$dir
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT

echo "== 1. full Fashion-MNIST curves =="
FULL=docs/src/fashion-mnist-full
if [ -n "${FMNIST:-}" ]; then
  "$BIN/se-compile" train models/se_resnet_mini.yaml --data "$FMNIST" --epochs 4 --batch-size 128 \
    --out "$WORK/full"
  cp "$WORK/full/history.csv" "$WORK/full/history.json" "$WORK/full/config.json" "$FULL/"
fi
"$BIN/examples/replot" "$FULL"

echo "== 2. excitation analysis: se_resnet_mini trained 3 epochs vs its initial weights =="
EXC=docs/src/excitation-analysis
"$BIN/se-compile" train models/se_resnet_mini.yaml --out "$WORK/mini" | tee "$WORK/train.txt"
"$BIN/examples/initial_weights" models/se_resnet_mini.yaml "$WORK/untrained.safetensors"
for w in trained untrained; do
  weights=$WORK/mini/best.safetensors; [ $w = untrained ] && weights=$WORK/untrained.safetensors
  # all 10 classes for the table, four for the picture
  "$BIN/se-compile" analyze models/se_resnet_mini.yaml --weights "$weights" -o "$WORK/$w-all" > /dev/null
  "$BIN/se-compile" analyze models/se_resnet_mini.yaml --weights "$weights" \
    --classes 1_trouser,5_sandal,7_sneaker,8_bag -o "$WORK/$w-4" > /dev/null
  cp "$WORK/$w-4/excitations.png" "$EXC/$w.png"
done
python3 - "$WORK" docs/src/analysis.md <<'PY'
import json, re, sys
work, chapter = sys.argv[1], sys.argv[2]
blocks = {w: json.load(open(f"{work}/{w}-all/excitations.json"))["blocks"] for w in ("trained", "untrained")}
hist = json.load(open(f"{work}/mini/history.json"))
rows = ["| block | specificity, trained | untrained | channel spread, trained | untrained |",
        "|---|---:|---:|---:|---:|"]
for t, u in zip(blocks["trained"], blocks["untrained"]):
    rows.append(f"| {t['label']} | {t['specificity']:.4f} | {u['specificity']:.4f} "
                f"| {t['channel_spread']:.4f} | {u['channel_spread']:.4f} |")
spread = [b["channel_spread"] for b in blocks["untrained"]]
spec = [b["specificity"] for b in blocks["trained"]]
accs = " → ".join(f"{h['val_accuracy']:.3f}" for h in hist)
text = "\n".join(rows) + (
    f"\n\nval_accuracy per epoch {accs}; untrained channel spread {min(spread):.2f}–{max(spread):.2f};"
    f" trained specificity {spec[0]:.2f} in the first block, {spec[-1]:.2f} in the last.")
src = open(chapter).read()
begin, end = "<!-- regen-docs: excitation table -->", "<!-- /regen-docs -->"
i, j = src.index(begin) + len(begin), src.index(end)
open(chapter, "w").write(src[:i] + "\n" + text + "\n" + src[j:])
print(text)
PY
echo "done: git diff --stat docs/ shows what changed"
