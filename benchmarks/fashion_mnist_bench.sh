#!/usr/bin/env bash
# Regenerates benchmarks/results/fashion_mnist_bench.*: one `edgekit bench` run over torch FP32 / INT8,
# ONNX Runtime FP32 / INT8 and OpenVINO FP32 / INT8 of the Fashion-MNIST MobileNetV2 (32x32), with accuracy,
# delta and top-1 agreement on all 10,000 test images. Needs benchmarks/fashion_mnist.sh and
# benchmarks/fashion_mnist_export.sh to have run.
# Usage: bash benchmarks/fashion_mnist_bench.sh   (repository root, venv with edgekit[all] active)
set -euo pipefail
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
OUT=${OUT:-runs/fashion_mnist}
RES=benchmarks/results
edgekit bench "$OUT/model.pt" "$OUT/model_int8.pt" "$OUT/export/model.onnx" "$OUT/export/model_int8.onnx" \
  "$OUT/export/model.xml" "$OUT/export/model_int8.xml" --data "$DATA" --threads 2 --min-runs 300 --min-seconds 10 \
  --json "$RES/fashion_mnist_bench.json" --markdown "$RES/fashion_mnist_bench.md" --plot "$RES/fashion_mnist_bench.png" \
  | tee "$RES/fashion_mnist_bench.txt"
