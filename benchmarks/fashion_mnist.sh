#!/usr/bin/env bash
# Regenerates benchmarks/results/fashion_mnist_*: MobileNetV2 trained from scratch on the full
# Fashion-MNIST (Debian package dataset-fashion-mnist: 60k train, 10k test), then PyTorch static INT8.
# Usage: bash benchmarks/fashion_mnist.sh [train|quantize|all]   (run from the repository root, venv active)
set -euo pipefail
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
OUT=${OUT:-runs/fashion_mnist}
RES=benchmarks/results
step=${1:-all}
[ -d "$DATA" ] || { echo "missing $DATA: apt-get install dataset-fashion-mnist" >&2; exit 1; }
mkdir -p "$RES"
machine() { echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(uname -m)"; }
if [ "$step" = train ] || [ "$step" = all ]; then
  cmd="edgekit train --data $DATA --model mobilenet_v2 --weights none --imgsz 32 --epochs 12 --batch 128 --hflip --threads 2 --out $OUT"
  { machine; echo "command: $cmd"; echo; $cmd; } 2>&1 | grep -v '^\s*$\|it/s\|s/batch' | tee "$RES/fashion_mnist_train.txt"
  cp "$OUT/metrics.json" "$RES/fashion_mnist_train_metrics.json"
  cp "$OUT/curves.png" "$RES/fashion_mnist_curves.png"
fi
if [ "$step" = quantize ] || [ "$step" = all ]; then
  cmd="edgekit quantize $OUT/model.pt --data $DATA --mode static --engine x86 --calib-batches 32 --threads 2 --json $RES/fashion_mnist_quantize.json"
  { machine; echo "command: $cmd"; echo; $cmd; } 2>&1 | tee "$RES/fashion_mnist_quantize.txt"
  # The same with torch's 7-bit x86 default activations, to show what the full-range default buys.
  cmd="edgekit quantize $OUT/model.pt --data $DATA --mode static --engine x86 --reduce-range --calib-batches 32 --threads 2 --out $OUT/model_int8_reduce_range.pt --json $RES/fashion_mnist_quantize_reduce_range.json"
  { machine; echo "command: $cmd"; echo; $cmd; } 2>&1 | tee "$RES/fashion_mnist_quantize_reduce_range.txt"
fi
