"""The README's main command, `edgekit demo`, end to end on the embedded data: every INT8 artifact within its
gate, the bench table of all six models, results printed step by step. The real recipe, so it takes minutes:
a change that makes the demo fragile again fails here before a user sees it."""
import json
import subprocess
import sys

import pytest

from edgekit.export.verify import TOLERANCES


@pytest.mark.slow
def test_demo_passes_every_gate_and_benches_all_six_models(tmp_path):
    out = tmp_path / "demo"
    proc = subprocess.run([sys.executable, "-m", "edgekit", "demo", "--out", str(out)], capture_output=True,
                          text=True, timeout=1800)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = proc.stdout
    steps = ["-- FP32 test metrics --", "-- PyTorch static INT8 vs FP32", "-- exported artifacts vs PyTorch FP32 --",
             "-- edgekit bench", "total time"]
    positions = [text.index(step) for step in steps]
    assert positions == sorted(positions)  # each result printed as its step ends
    gate = TOLERANCES["int8"]
    verified = {line.split()[0]: line.split() for line in text.splitlines() if line.startswith("model")
                and line.split()[1:2] in (["fp32"], ["int8"])}
    for name in ("model.onnx", "model_int8.onnx", "model.xml", "model_int8.xml"):
        assert verified[name][-1] == "ok", verified[name]
    for name in ("model_int8.onnx", "model_int8.xml"):
        agreement, delta = float(verified[name][4]), float(verified[name][6])
        assert agreement >= gate["min_agreement"] and delta >= gate["min_delta_pp"], verified[name]
    rows = json.loads((out / "bench.json").read_text())["rows"]
    assert sorted(r["name"] for r in rows) == sorted(["model.pt", "model_int8.pt", "model.onnx", "model_int8.onnx",
                                                      "model.xml", "model_int8.xml"])
    assert all(r["status"] == "ok" for r in rows), [(r["name"], r["status"], r.get("reason")) for r in rows]
    pytorch_int8 = next(r for r in rows if r["name"] == "model_int8.pt")
    assert pytorch_int8["agreement"] >= gate["min_agreement"]
    assert pytorch_int8["delta_pp"] >= gate["min_delta_pp"]
