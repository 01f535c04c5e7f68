#!/usr/bin/env bash
# Checks the README's claim about the oldest onnxruntime that loads edgekit's ONNX files: installs an old
# onnxruntime (default 1.15.0, the oldest wheel PyPI has for Python 3.11) into a throwaway venv with
# nothing else but numpy, and runs the exported models on 1,000 real test images prepared by the current
# venv; the labels must equal those of the current onnxruntime.
# Usage: bash benchmarks/onnxruntime_oldest.sh [EXPORT_DIR]   (venv with edgekit[all] active)
set -euo pipefail
EXPORT=${1:-runs/fashion_mnist/export}
VERSION=${ORT_VERSION:-1.15.0}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
python - "$EXPORT" "$DATA" "$WORK" <<'PY'
import sys, numpy as np, onnxruntime as ort
from pathlib import Path
from edgekit.core.artifacts import read_sidecar
from edgekit.core.data import load_table, test_subset
export, data, work = map(Path, sys.argv[1:])
table = load_table(str(data))
idx = test_subset(table, 1000)
for model in sorted(export.glob("*.onnx")):
    spec, _ = read_sidecar(model)
    x = table.inputs(idx, spec)
    s = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    labels = np.array([s.run(None, {name: x[i:i + 1]})[0].argmax() for i in range(len(x))])
    np.savez(work / (model.stem + ".npz"), x=x, labels=labels, path=str(model), version=ort.__version__)
PY
python3 -m venv "$WORK/venv"
"$WORK/venv/bin/pip" install -q "onnxruntime==$VERSION" "numpy<2" 2>&1 | grep -v '^WARNING' || true
"$WORK/venv/bin/python" - "$WORK" <<'PY'
import sys, numpy as np, onnxruntime as ort
from pathlib import Path
print(f"{'model':<40}{'onnxruntime':>12}{'reference':>12}{'labels equal':>14}")
ok = True
for f in sorted(Path(sys.argv[1]).glob("*.npz")):
    d = np.load(f)
    s = ort.InferenceSession(str(d["path"]), providers=["CPUExecutionProvider"])
    name = s.get_inputs()[0].name
    labels = np.array([s.run(None, {name: d["x"][i:i + 1]})[0].argmax() for i in range(len(d["x"]))])
    same = float((labels == d["labels"]).mean())
    ok &= same == 1.0
    print(f"{Path(str(d['path'])).name:<40}{ort.__version__:>12}{str(d['version']):>12}{same:>14.4f}")
sys.exit(0 if ok else 1)
PY
