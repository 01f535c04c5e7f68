#!/usr/bin/env bash
# Footprint of the device install (what a Raspberry Pi gets): a fresh venv with `pip install .[onnx]` only,
# its size on disk, and the peak RSS of `edgekit run` in it (the Fashion-MNIST INT8 ONNX model on
# Megamind.avi, and the attend app with face detection on the same video).
# Usage: bash benchmarks/footprint.sh   (repository root; needs runs/fashion_mnist/export/model_int8.onnx from
# benchmarks/fashion_mnist_export.sh and Megamind.avi from tools/system-packages.sh)
set -euo pipefail
OUT=benchmarks/results/footprint.txt
MODEL=${MODEL:-runs/fashion_mnist/export/model_int8.onnx}
VIDEO=/usr/share/doc/opencv-doc/examples/data/Megamind.avi
VENV=$(mktemp -d)/venv
python3 -m venv "$VENV"
"$VENV/bin/pip" install -q --disable-pip-version-check ".[onnx]"
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
{
  echo "\$ bash benchmarks/footprint.sh   ($(uname -m), $(python3 --version), $(date -u +%F))"
  echo "packages: $("$VENV/bin/pip" list --format=freeze 2>/dev/null | grep -ivE '^(pip|setuptools)==' | tr '\n' ' ')"
  echo "venv on disk: $(du -sm "$VENV" | cut -f1) MB (site-packages $(du -sm "$site" | cut -f1) MB; pip itself $(du -sm "$site/pip" | cut -f1) MB)"
  echo "largest: $(du -sm "$site"/* | sort -rn | head -4 | awk '{printf "%s %s MB; ", $2, $1}' | sed "s|$site/||g")"
  for app in classify faces; do
    extra=()
    [[ $app == faces ]] && extra=(--faces haar)
    "$VENV/bin/edgekit" run --model "$MODEL" --source "$VIDEO" --out "$(dirname "$VENV")/run_$app" ${extra[@]+"${extra[@]}"} >/dev/null 2>&1
    python3 - "$(dirname "$VENV")/run_$app/summary.json" "$app" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"edgekit run ({'--faces haar' if sys.argv[2] == 'faces' else 'whole frame'}, ONNX Runtime, "
      f"{s['frames']} frames 720x528, annotated video on): peak RSS {s['peak_rss_mb']:.0f} MB, "
      f"{s['pipeline_fps']:.0f} FPS")
PY
  done
} | tee "$OUT"
rm -rf "$(dirname "$VENV")"
