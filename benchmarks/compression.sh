#!/usr/bin/env bash
# Compression beyond PTQ on real data (issue 18), one script, CPU named in every log:
#   1. a MobileNetV2 teacher trained from scratch on the full Fashion-MNIST (Debian dataset-fashion-mnist);
#   2. small_cnn (28x28 grey) trained alone and distilled from that teacher, same recipe otherwise; and a
#      MobileNetV3-Small student alone vs distilled over three seeds (step kd_mnv3);
#   3. channel and L1-unstructured pruning of the teacher, swept over ratios, before/after 1 fine-tune epoch
#      on 10,000 train images; and 50% channel pruning with 5 fine-tune epochs on all train images,
#      benchmarked against the teacher on ONNX Runtime, FP32 and INT8 (step prune50);
#   4. PyTorch INT8 of the teacher: post-training (calibrated) vs quantization-aware training (1 epoch on
#      10,000 train images), and both exported as they are to ONNX QDQ + OpenVINO and verified; and QAT of
#      the 12-epoch model of benchmarks/fashion_mnist.sh with 7-bit activations (step qat12);
#   5. the small-CNN dynamic-INT8 study on real handwritten digits (opencv-doc digits.png: 5,000 digits,
#      20x20, 500 per class, cut into a folder per digit) and on Fashion-MNIST.
# Usage: bash benchmarks/compression.sh [teacher|kd|kd_mnv3|qat|qat12|prune|prune50|dynamic|all]   (repository root, venv active)
# Writes benchmarks/results/compression_*.txt|json|png; work files under $OUT (default runs/compression).
set -euo pipefail
FMNIST=${FMNIST:-/usr/share/datasets/fashion-mnist}
DIGITS_PNG=${DIGITS_PNG:-/usr/share/doc/opencv-doc/examples/data/digits.png}
OUT=${OUT:-runs/compression}
RES=benchmarks/results
step=${1:-all}
[ -d "$FMNIST" ] || { echo "missing $FMNIST: apt-get install dataset-fashion-mnist" >&2; exit 1; }
mkdir -p "$RES" "$OUT"
evidence() {
  echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores, $(uname -m)"
  python -c 'import torch, platform; print(f"python {platform.python_version()}, torch {torch.__version__}, threads {torch.get_num_threads()}")'
  echo "command: $*"
  echo
}
run() {  # run CMD... and keep its output (progress bars dropped) in $RES/compression_$name.txt
  local name=$1; shift
  { evidence "$@"; "$@"; } 2>&1 | grep -v '^\s*$\|it/s\|s/it\|s/batch' | tee "$RES/compression_$name.txt"
}
if [ "$step" = teacher ] || [ "$step" = all ]; then
  run teacher edgekit train --data "$FMNIST" --model mobilenet_v2 --weights none --imgsz 32 --epochs 5 \
    --schedule cosine --batch 128 --hflip --threads 2 --out "$OUT/teacher"
fi
if [ "$step" = kd ] || [ "$step" = all ]; then
  run small_cnn edgekit train --data "$FMNIST" --model small_cnn --imgsz 28 --epochs 4 --schedule cosine \
    --batch 128 --threads 2 --out "$OUT/small_cnn"
  run small_cnn_kd edgekit train --data "$FMNIST" --model small_cnn --imgsz 28 --epochs 4 --schedule cosine \
    --batch 128 --threads 2 --teacher "$OUT/teacher/model.pt" --kd-temperature 4 --kd-alpha 0.9 \
    --out "$OUT/small_cnn_kd"
fi
if [ "$step" = kd_mnv3 ] || [ "$step" = all ]; then
  # MobileNetV3-Small student, alone vs distilled from the MobileNetV2 teacher: same seed, data (20,000 train
  # images), epochs and recipe; three seeds for the spread. Summary: compression_kd_mnv3.txt / .json.
  for seed in 0 1 2; do
    student=(edgekit train --data "$FMNIST" --model mobilenet_v3_small --weights none --imgsz 32 --epochs 4
             --schedule cosine --batch 128 --hflip --limit 20000 --seed "$seed" --threads 2)
    run "kd_mnv3_alone_seed$seed" "${student[@]}" --out "$OUT/kd_mnv3/alone_seed$seed"
    run "kd_mnv3_kd_seed$seed" "${student[@]}" --teacher "$OUT/teacher/model.pt" --kd-temperature 4 \
      --kd-alpha 0.9 --out "$OUT/kd_mnv3/kd_seed$seed"
  done
  { evidence python benchmarks/scripts/kd_seeds.py "$OUT/kd_mnv3" "$RES/compression_kd_mnv3.json"
    python benchmarks/scripts/kd_seeds.py "$OUT/kd_mnv3" "$RES/compression_kd_mnv3.json"; } | tee "$RES/compression_kd_mnv3.txt"
fi
if [ "$step" = prune50 ] || [ "$step" = all ]; then
  # Channel pruning at 50% with a longer fine-tune (5 epochs on all 54,000 train images), then the teacher
  # and the pruned model, FP32 and INT8, exported to ONNX and benchmarked side by side on ONNX Runtime.
  run prune50 edgekit prune "$OUT/teacher/model.pt" --data "$FMNIST" --method channel --ratios 0.5 \
    --finetune-epochs 5 --threads 2 --out "$OUT/prune50"
  cp "$OUT/prune50/prune.json" "$RES/compression_prune50.json"
  for name in teacher prune50/channel_0.5; do
    edgekit export "$OUT/$name/model.pt" --format onnx --int8 --data "$FMNIST" --out "$OUT/onnx_${name%%/*}"
  done
  run prune50_bench edgekit bench run "$OUT/onnx_teacher/model.onnx" "$OUT/onnx_teacher/model_int8.onnx" \
    "$OUT/onnx_prune50/model.onnx" "$OUT/onnx_prune50/model_int8.onnx" --runtimes onnxruntime --threads 1 \
    --data "$FMNIST" --images 2000 --json "$RES/compression_prune50_bench.json" --plot "$RES/compression_tradeoff.png"
fi
if [ "$step" = qat ] || [ "$step" = all ]; then
  run ptq edgekit quantize "$OUT/teacher/model.pt" --data "$FMNIST" --mode static --engine x86 \
    --calib-batches 32 --threads 2 --out "$OUT/teacher_ptq.pt" --json "$RES/compression_ptq.json" || true
  run qat edgekit quantize "$OUT/teacher/model.pt" --data "$FMNIST" --mode qat --engine x86 --qat-epochs 1 \
    --qat-lr 1e-4 --limit-train 10000 --batch 64 --threads 2 --out "$OUT/teacher_qat.pt" \
    --json "$RES/compression_qat.json" || true
  run qat_export edgekit export "$OUT/teacher_qat.pt" --format onnx --format openvino --data "$FMNIST" \
    --out "$OUT/teacher_qat_export"
  run qat_bench edgekit bench run "$OUT/teacher_qat_export/model_int8.onnx" "$OUT/teacher_qat_export/model_int8.xml" \
    "$OUT/teacher_qat.pt" "$OUT/teacher_ptq.pt" "$OUT/teacher/model.pt" --threads 1 --data "$FMNIST" --images 2000
fi
if [ "$step" = qat12 ] || [ "$step" = all ]; then
  # QAT where post-training INT8 loses the most: the 12-epoch MobileNetV2 of benchmarks/fashion_mnist.sh with
  # 7-bit activations (--reduce-range; its PTQ row is fashion_mnist_quantize_reduce_range.txt). QAT starts
  # from the calibrated ranges and learns from the labels and from the FP32 model's own outputs; then the
  # INT8 checkpoint is exported as it is to ONNX QDQ and OpenVINO and verified.
  FM_MODEL=${FM_MODEL:-runs/fashion_mnist/model.pt}
  [ -f "$FM_MODEL" ] || { echo "missing $FM_MODEL: bash benchmarks/fashion_mnist.sh train" >&2; exit 1; }
  run qat12 edgekit quantize "$FM_MODEL" --data "$FMNIST" --mode qat --engine x86 --reduce-range \
    --qat-epochs "${QAT_EPOCHS:-2}" --qat-lr "${QAT_LR:-1e-4}" --qat-kd-alpha "${QAT_KD_ALPHA:-0.5}" \
    --limit-train "${QAT_IMAGES:-20000}" --batch 64 --threads 2 --out "$OUT/fm12_qat.pt" \
    --json "$RES/compression_qat12.json"
  run qat12_export edgekit export "$OUT/fm12_qat.pt" --format onnx --format openvino --data "$FMNIST" \
    --out "$OUT/fm12_qat_export"
fi
if [ "$step" = prune ] || [ "$step" = all ]; then
  run prune_channel edgekit prune "$OUT/teacher/model.pt" --data "$FMNIST" --method channel \
    --ratios 0.3,0.5,0.7 --finetune-epochs 1 --limit-train 10000 --threads 2 --out "$OUT/prune_channel"
  cp "$OUT/prune_channel/prune.json" "$RES/compression_prune_channel.json"
  cp "$OUT/prune_channel/prune.png" "$RES/compression_prune_channel.png"
  run prune_l1 edgekit prune "$OUT/teacher/model.pt" --data "$FMNIST" --method l1-unstructured \
    --ratios 0.5,0.7,0.9 --finetune-epochs 1 --limit-train 10000 --threads 2 --out "$OUT/prune_l1"
  cp "$OUT/prune_l1/prune.json" "$RES/compression_prune_l1.json"
  cp "$OUT/prune_l1/prune.png" "$RES/compression_prune_l1.png"
fi
if [ "$step" = dynamic ] || [ "$step" = all ]; then
  [ -f "$DIGITS_PNG" ] || { echo "missing $DIGITS_PNG: apt-get install opencv-doc" >&2; exit 1; }
  python - "$DIGITS_PNG" "$OUT/digits" <<'PY'
# digits.png: 50 rows x 100 columns of 20x20 cells, 5 rows per digit 0..9 (OpenCV's kNN/SVM sample data).
import sys, pathlib, cv2
image, root = cv2.imread(sys.argv[1], cv2.IMREAD_GRAYSCALE), pathlib.Path(sys.argv[2])
assert image is not None and image.shape == (1000, 2000), "unexpected digits.png"
for row in range(50):
    folder = root / str(row // 5)
    folder.mkdir(parents=True, exist_ok=True)
    for col in range(100):
        cv2.imwrite(str(folder / f"{row:02d}_{col:02d}.png"), image[row * 20:(row + 1) * 20, col * 20:(col + 1) * 20])
print(f"wrote 5000 digits to {root}")
PY
  run digits_small_cnn edgekit train --data "$OUT/digits" --model small_cnn --imgsz 28 --epochs 10 \
    --schedule cosine --batch 64 --threads 2 --out "$OUT/digits_small_cnn"
  run digits_dynamic edgekit quantize "$OUT/digits_small_cnn/model.pt" --data "$OUT/digits" --mode dynamic \
    --threads 1 --json "$RES/compression_digits_dynamic.json" || true
  run digits_static edgekit quantize "$OUT/digits_small_cnn/model.pt" --data "$OUT/digits" --mode static \
    --threads 1 --out "$OUT/digits_small_cnn/model_static_int8.pt" --json "$RES/compression_digits_static.json" || true
  run digits_export edgekit export "$OUT/digits_small_cnn/model.pt" --format onnx --int8 --data "$OUT/digits" \
    --out "$OUT/digits_small_cnn/onnx" || true
  run digits_export_dynamic edgekit export "$OUT/digits_small_cnn/model.pt" --format onnx --int8 --onnx-int8 dynamic \
    --data "$OUT/digits" --out "$OUT/digits_small_cnn/onnx_dynamic" || true
  cp "$OUT/digits_small_cnn/onnx_dynamic/model_int8.onnx" "$OUT/digits_small_cnn/onnx/model_dynamic_int8.onnx"
  cp "$OUT/digits_small_cnn/onnx_dynamic/model_int8.onnx.edgekit.json" \
    "$OUT/digits_small_cnn/onnx/model_dynamic_int8.onnx.edgekit.json"
  # every row side by side in one run, 1 thread (the small model's ops are too short to split)
  run digits_bench edgekit bench run "$OUT/digits_small_cnn/model.pt" "$OUT/digits_small_cnn/model_int8.pt" \
    "$OUT/digits_small_cnn/model_static_int8.pt" "$OUT/digits_small_cnn/onnx/model.onnx" \
    "$OUT/digits_small_cnn/onnx/model_dynamic_int8.onnx" "$OUT/digits_small_cnn/onnx/model_int8.onnx" \
    --threads 1 --data "$OUT/digits" --min-seconds 5 --json "$RES/compression_digits_bench.json" || true
  run fmnist_dynamic edgekit quantize "$OUT/small_cnn/model.pt" --data "$FMNIST" --mode dynamic \
    --threads 1 --json "$RES/compression_fmnist_dynamic.json" || true
fi
