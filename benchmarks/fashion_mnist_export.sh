#!/usr/bin/env bash
# Regenerates benchmarks/results/fashion_mnist_export.*: the Fashion-MNIST MobileNetV2 of
# benchmarks/fashion_mnist.sh exported to ONNX FP32/INT8 and OpenVINO FP32/FP16/INT8, every artifact
# verified against PyTorch on the full 10,000-image test set.
# Usage: bash benchmarks/fashion_mnist_export.sh   (repository root, venv with edgekit[all] active)
set -euo pipefail
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
OUT=${OUT:-runs/fashion_mnist}
RES=benchmarks/results
[ -f "$OUT/model.pt" ] || { echo "missing $OUT/model.pt: run benchmarks/fashion_mnist.sh train first" >&2; exit 1; }
machine() { echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(uname -m)"; }
cmd="edgekit export $OUT/model.pt --format onnx --format openvino --int8 --fp16 --data $DATA --verify-images 0 --out $OUT/export"
{ machine; echo "command: $cmd"; echo; $cmd; } 2>&1 | grep -v 'Performing symbolic\|it/s' | tee "$RES/fashion_mnist_export.txt"
cmd="edgekit verify $OUT/export/model.onnx $OUT/export/model_int8.onnx $OUT/export/model.xml $OUT/export/model_fp16.xml $OUT/export/model_int8.xml --reference $OUT/model.pt --data $DATA --images 0 --json $RES/fashion_mnist_verify.json"
{ machine; echo "command: $cmd"; echo; $cmd; } 2>&1 | tee "$RES/fashion_mnist_verify.txt"
# The other OpenVINO INT8 route (from the QDQ ONNX), to back the choice of NNCF as the default.
cmd="edgekit export $OUT/model.pt --format openvino --int8 --ov-int8 qdq --data $DATA --verify-images 0 --out $OUT/export_ov_qdq"
{ machine; echo "command: $cmd"; echo; $cmd; } 2>&1 | grep -v 'Performing symbolic\|it/s' | tee "$RES/fashion_mnist_export_ov_qdq.txt"
{ echo "sizes (bytes): FP32 IR vs INT8 IR, xml + bin"; for d in export export_ov_qdq; do
    fp32=$(( $(stat -c%s $OUT/$d/model.xml) + $(stat -c%s $OUT/$d/model.bin) ))
    int8=$(( $(stat -c%s $OUT/$d/model_int8.xml) + $(stat -c%s $OUT/$d/model_int8.bin) ))
    echo "$d: fp32 $fp32 int8 $int8 ratio $(python3 -c "print(f'{$int8/$fp32:.3f}')")"; done
  echo "onnx: fp32 $(stat -c%s $OUT/export/model.onnx) int8 $(stat -c%s $OUT/export/model_int8.onnx) ratio $(python3 -c "print(f'{$(stat -c%s $OUT/export/model_int8.onnx)/$(stat -c%s $OUT/export/model.onnx):.3f}')")"
} | tee "$RES/fashion_mnist_export_sizes.txt"
# The oldest onnxruntime the README names must load and agree with the current one.
{ machine; echo "command: bash benchmarks/onnxruntime_oldest.sh $OUT/export"; echo; bash benchmarks/onnxruntime_oldest.sh "$OUT/export"; } 2>&1 | tee "$RES/onnxruntime_oldest.txt"
