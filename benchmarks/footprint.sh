#!/usr/bin/env bash
# Footprint of the device install (what a Raspberry Pi gets):
#  - x86_64: a fresh venv installed the way the bundle's install.sh does it (`pip install .[onnx]` with no .pyc
#    written ahead and no wheel cache, the device trim, then pip leaves the venv), its size on disk, and the peak RSS of
#    `edgekit run` in it (an INT8 ONNX model on Megamind.avi, whole frame and with face detection);
#  - aarch64: the same pins from PyPI's aarch64 wheels, unpacked on this machine with pip's --target and
#    --platform (the files a Pi 4/5 with Python 3.11 gets; measured without emulation), before and after the
#    trim that install.sh applies (python -m edgekit.export.device_trim).
# Usage: bash benchmarks/footprint.sh [MODEL_INT8.onnx]   (repository root, the README's venv active;
#   default model: runs/fashion_mnist/export/model_int8.onnx, else runs/python_versions/bundle/models/model_int8.onnx)
set -euo pipefail
OUT=benchmarks/results/footprint.txt
MODEL=${1:-runs/fashion_mnist/export/model_int8.onnx}
[[ -f $MODEL ]] || MODEL=runs/python_versions/bundle/models/model_int8.onnx
[[ -f $MODEL ]] || { echo "error: no INT8 ONNX model; give one, or run benchmarks/python_versions.sh first" >&2; exit 1; }
VIDEO=/usr/share/doc/opencv-doc/examples/data/Megamind.avi
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
VENV=$TMP/venv
python3 -m venv "$VENV"
# --no-compile as an option: PIP_NO_COMPILE=1 in the environment means the opposite to pip.
PIP_NO_CACHE_DIR=1 "$VENV/bin/pip" install -q --no-compile --disable-pip-version-check ".[onnx]"
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
(cd "$TMP" && "$VENV/bin/python" -m edgekit.export.device_trim "$site") > "$TMP/trim_x86.txt"  # not from here: ./edgekit would shadow the install
"$VENV/bin/pip" uninstall -q -y pip setuptools 2>/dev/null
# The bundle's requirements as an aarch64 device with Python 3.11 reads them (pip would evaluate their
# environment markers for this x86 machine, not for --platform).
python -c "from edgekit.export.bundle import device_requirements as d, pinned_requirements as p
print('\n'.join(d(p(), 'aarch64', '3.11')))" > "$TMP/req.txt"
platforms=()
for glibc in $(seq 17 36); do platforms+=(--platform "manylinux_2_${glibc}_aarch64"); done
pip install -q --no-compile --only-binary=:all: "${platforms[@]}" --platform manylinux2014_aarch64 --python-version 3.11 \
  --target "$TMP/aarch64" -r "$TMP/req.txt" 2> >(grep -v '^WARNING' >&2)
before_trim=$(du -sm "$TMP/aarch64" | cut -f1)
python -m edgekit.export.device_trim "$TMP/aarch64" > "$TMP/trim_aarch64.txt"
largest() { du -sm "$1"/* | sort -rn | head -"$2" | awk '{printf "%s %s MB; ", $2, $1}' | sed "s|$1/||g"; }
{
  echo "\$ bash benchmarks/footprint.sh $MODEL   ($(uname -m), $(python3 --version), $(date -u +%F))"
  echo "packages: $("$VENV/bin/python" -c "from importlib.metadata import distributions as d; print(' '.join(sorted({x.metadata['Name'] + '==' + x.version for x in d()})))")"
  echo "x86_64 venv on disk: $(du -sm "$VENV" | cut -f1) MB (site-packages $(du -sm "$site" | cut -f1) MB; no pip, no .pyc before first use; $(tail -1 "$TMP/trim_x86.txt"))"
  echo "  largest: $(largest "$site" 6)"
  echo "aarch64 (PyPI wheels for Python 3.11, unpacked with pip --target): $before_trim MB; after the device trim: $(du -sm "$TMP/aarch64" | cut -f1) MB"
  sed 's/^/  /' "$TMP/trim_aarch64.txt"
  echo "  largest: $(largest "$TMP/aarch64" 6)"
  echo "  the three native cores: onnxruntime/capi $(du -sm "$TMP/aarch64/onnxruntime/capi" | cut -f1) MB, OpenCV (cv2 + its .libs) $(( $(du -sm "$TMP/aarch64/cv2" | cut -f1) + $(du -sm "$TMP/aarch64/opencv_python_headless.libs" | cut -f1) )) MB, numpy (+ OpenBLAS) $(( $(du -sm "$TMP/aarch64/numpy" | cut -f1) + $(du -sm "$TMP/aarch64/numpy.libs" | cut -f1) )) MB"
  for app in classify faces; do
    extra=()
    [[ $app == faces ]] && extra=(--faces haar)
    "$VENV/bin/edgekit" run --model "$MODEL" --source "$VIDEO" --out "$TMP/run_$app" ${extra[@]+"${extra[@]}"} >/dev/null 2>&1
    python3 - "$TMP/run_$app/summary.json" "$app" <<'PY'
import json, sys
s = json.load(open(sys.argv[1]))
print(f"edgekit run ({'--faces haar' if sys.argv[2] == 'faces' else 'whole frame'}, ONNX Runtime, "
      f"{s['frames']} frames 720x528, annotated video on): peak RSS {s['peak_rss_mb']:.0f} MB, "
      f"{s['pipeline_fps']:.0f} FPS")
PY
  done
} | tee "$OUT"
