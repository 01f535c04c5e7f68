#!/usr/bin/env bash
# Regenerates benchmarks/results/latency_*: the speed targets of the runtimes issue, measured in ONE
# `edgekit bench` run per model so that every ratio is side by side (2 threads, batch 1, p90).
#   MobileNetV2 at 160x160 and MobileNetV3-Large at 224x224, random init (latency only; accuracy columns
#   are omitted on purpose), each as torch FP32 / torch INT8 (FX, x86) / ORT FP32 / ORT QDQ INT8 /
#   OpenVINO FP32 / OpenVINO INT8 (NNCF); INT8 calibrated on 256 real Fashion-MNIST train images.
# Usage: bash benchmarks/latency_targets.sh   (repository root, venv with edgekit[all] active)
set -euo pipefail
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
OUT=${OUT:-runs/latency}
RES=benchmarks/results
mkdir -p "$OUT"
for target in mobilenet_v2:160 mobilenet_v3_large:224; do
  arch=${target%:*}; size=${target#*:}; dir=$OUT/${arch}_$size
  mkdir -p "$dir"
  [ -f "$dir/model.pt" ] || python benchmarks/scripts/random_init.py "$arch" "$size" "$DATA" "$dir/model.pt"
  [ -f "$dir/model_int8.pt" ] || edgekit quantize "$dir/model.pt" --data "$DATA" --calib-batches 8 --limit-test 64 --threads 2 >/dev/null
  [ -f "$dir/model_int8.xml" ] || edgekit export "$dir/model.pt" --format onnx --format openvino --int8 --data "$DATA" \
      --calib-size 256 --no-verify 2>&1 | grep -v 'it/s' | tail -6
  edgekit bench "$dir/model.pt" "$dir/model_int8.pt" "$dir/model.onnx" "$dir/model_int8.onnx" "$dir/model.xml" \
      "$dir/model_int8.xml" --threads 2 --min-runs 300 --min-seconds 10 \
      --json "$RES/latency_${arch}_$size.json" --markdown "$RES/latency_${arch}_$size.md" | tee "$RES/latency_${arch}_$size.txt"
done
