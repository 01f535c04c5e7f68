#!/usr/bin/env bash
# The Pi bundle on every Python a device may have: 3.9 (Raspberry Pi OS bullseye) to 3.13 (trixie).
# For each Python:
#   1. every line of the bundle's requirements.txt that applies to it has an aarch64 wheel on PyPI (pip's
#      resolver with aarch64 manylinux tags for that Python; metadata only, nothing installed);
#   2. the bundle's own install.sh (PYTHON=that Python) makes a venv on this x86 machine, and edgekit doctor,
#      run.sh and edgekit bench work in it, without torch;
#   3. run.sh's labels on 200 real Fashion-MNIST test images equal this venv's (FP32 and INT8).
# Usage: bash benchmarks/python_versions.sh [MODEL.pt]   (repository root, the README's venv active;
#   the Pythons from pyenv or python3.X on PATH). Log: benchmarks/results/python_versions.log
set -euo pipefail
MODEL=${1:-runs/python_versions/model/model.pt}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
VIDEO=/usr/share/doc/opencv-doc/examples/data/Megamind.avi
WORK=runs/python_versions
LOG=benchmarks/results/python_versions.log
started=$(date +%s)
command -v edgekit >/dev/null || { echo "error: activate the README's venv first (edgekit not on PATH)" >&2; exit 1; }
[[ -d $DATA && -f $VIDEO ]] || bash tools/system-packages.sh --benchmarks

find_python() {  # python3.X on PATH (one that runs: not a pyenv shim of another version), else pyenv's 3.X
  local v=$1
  if "python$v" --version >/dev/null 2>&1; then command -v "python$v"; return; fi
  local root; root=$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")
  ls -d "$root"/versions/"$v".*/bin/"python$v" 2>/dev/null | sort -V | tail -1
}

if [[ ! -f $MODEL ]]; then
  edgekit train --data "$DATA" --weights none --imgsz 32 --epochs 4 --limit 8000 --out "$(dirname "$MODEL")"
fi
bundle=$WORK/bundle
rm -rf "$bundle" "$WORK/host_out" "$WORK"/py*
edgekit export "$MODEL" --format onnx --int8 --bundle pi --out "$bundle" --data "$DATA" >/dev/null
python benchmarks/scripts/pi_inputs.py "$VIDEO" "$DATA" "$bundle" >/dev/null
for m in "$bundle"/models/*.onnx; do
  edgekit run --model "$m" --source "$bundle/images" --smooth none --hold 1 --no-save-video \
    --out "$WORK/host_out/$(basename "$m" .onnx)" >/dev/null 2>&1
done
platforms=()
for glibc in $(seq 17 36); do platforms+=(--platform "manylinux_2_${glibc}_aarch64"); done
platforms+=(--platform manylinux2014_aarch64)

{
  echo "# $(date -u) $(uname -m), $(lscpu | sed -n 's/^Model name: *//p'); command: bash benchmarks/python_versions.sh $*"
  echo "# requirements.txt of the bundle:"
  grep -v '^#' "$bundle/requirements.txt" | sed 's/^/#   /'
} > "$LOG"
exec > >(tee -a "$LOG") 2>&1  # everything below goes to the screen and the log
result=PASS
for v in 3.9 3.10 3.11 3.12 3.13; do
  py=$(find_python "$v")
  if [[ -z $py ]]; then echo "== Python $v: not found on this machine"; result=FAIL; continue; fi
  out=$WORK/py$v
  mkdir -p "$out"
  echo "== Python $v ($py, $("$py" --version 2>&1))"
  # 1. aarch64 wheels for this Python, for the pins that apply to it (pip evaluates the markers for the
  #    Python and machine it runs on, not for --python-version and --platform: evaluate them here)
  python -c "import sys; from edgekit.export.bundle import device_requirements as d
print('\n'.join(d(open(sys.argv[1]).read().splitlines(), 'aarch64', sys.argv[2])))" "$bundle/requirements.txt" "$v" \
    > "$out.requirements.txt"
  if pip install -q --dry-run --ignore-installed --only-binary=:all: "${platforms[@]}" --python-version "$v" \
      --target "$out/aarch64-dry-run" --report "$out.aarch64.json" -r "$out.requirements.txt" 2>"$out.err"; then
    python -c "import json,sys; r=json.load(open(sys.argv[1])); print('aarch64 wheels resolve:', ' '.join(
      i['metadata']['name']+'=='+i['metadata']['version'] for i in r['install']))" "$out.aarch64.json"
  else
    echo "aarch64 wheels: FAIL: $(grep -v '^WARNING' "$out.err" | tail -1)"; result=FAIL
  fi
  # 2. the bundle's install.sh and run.sh with this Python
  t0=$(date +%s)
  if PYTHON=$py VENV=$out/venv bash "$bundle/install.sh" >"$out.install.log" 2>&1; then
    echo "install.sh: exit 0 in $(( $(date +%s) - t0 )) s; $(grep -E '^(OK|WARN|FAIL) +model' "$out.install.log")"
    "$out/venv/bin/python" -c "from importlib.metadata import version as v; print(' '.join(n + '==' + v(n) for n in
      ('edgekit', 'onnxruntime', 'numpy', 'opencv-python-headless', 'click')))"
    "$out/venv/bin/python" -m pip --version >/dev/null 2>&1 && echo "pip: still in the venv" || echo "pip: left the venv (install.sh)"
    "$out/venv/bin/python" -c "import torch" 2>/dev/null && { echo "torch importable: FAIL"; result=FAIL; } || echo "torch: not installed"
    # run.sh runs the bundle's main model (INT8); the FP32 one goes through edgekit run in the same venv
    VENV=$out/venv OUT=$out/run/model_int8 SERVE=127.0.0.1:0 bash "$bundle/run.sh" "$bundle/images" --smooth none \
      --hold 1 2>&1 | grep "^source" || { echo "run.sh: FAIL"; result=FAIL; }
    "$out/venv/bin/edgekit" run --model "$bundle/models/model.onnx" --source "$bundle/images" --smooth none --hold 1 \
      --no-save-video --out "$out/run/model" 2>&1 | grep "^source" || { echo "edgekit run: FAIL"; result=FAIL; }
    # (from $out: in the repository root, `python -m edgekit...` would find the source folder edgekit/ first)
    (cd "$out" && venv/bin/edgekit bench run "$PWD/../bundle/models/model_int8.onnx" --min-seconds 0.5 --threads 1 \
      >bench.log 2>&1) && echo "edgekit bench run: exit 0" || { echo "edgekit bench run: FAIL"; tail -3 "$out/bench.log"; result=FAIL; }
    # the same onnxruntime must give the same labels; another version has other INT8 kernels (FP32 must still match)
    theirs=$("$out/venv/bin/python" -c "import onnxruntime; print(onnxruntime.__version__)")
    ours=$(python -c "import onnxruntime; print(onnxruntime.__version__)")
    agreement=1.0
    [[ $theirs == "$ours" ]] || { agreement=0.98; echo "onnxruntime $theirs there, $ours here: INT8 labels may differ"; }
    python benchmarks/scripts/compare_labels.py "$WORK/host_out" "$out/run" "Python $v vs this venv" \
      --min-agreement-int8 $agreement || result=FAIL
    echo "venv: $(du -sm "$out/venv" | cut -f1) MB"
  else
    echo "install.sh: FAIL"; tail -5 "$out.install.log"; result=FAIL
  fi
done
echo "RESULT: $result in $(( $(date +%s) - started )) s"
[[ $result == PASS ]]
