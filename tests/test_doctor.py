"""`edgekit doctor`: the INT8 advice per instruction set, and the real command on real models."""
import json

import pytest

from conftest import run_cli, run_cli_without
from edgekit.doctor import int8_advice


@pytest.mark.parametrize("flags, arm, core, status, fragment", [
    ({"asimd"}, True, "Cortex-A72", "warn", "Cortex-A72 without dot-product: INT8 may not beat FP32"),
    ({"asimd", "asimddp"}, True, "Cortex-A76", "ok", "dot-product"),
    ({"asimd", "asimddp", "i8mm"}, True, None, "ok", "i8mm"),
    ({"avx2", "fma"}, False, None, "warn", "reduce_range"),
    ({"avx2", "avx512_vnni"}, False, None, "ok", "VNNI"),
    ({"sse4_2"}, False, None, "warn", "may be slower"),
])
def test_int8_advice_follows_the_instruction_set(flags, arm, core, status, fragment):
    check = int8_advice(frozenset(flags), arm, core)
    assert check.status == status and fragment in check.detail


def test_doctor_loads_and_runs_the_model_without_torch(exported, tmp_path):
    out, _ = exported
    proc = run_cli_without("torch", "doctor", str(out / "model_int8.onnx"), "--json", str(tmp_path / "d.json"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    checks = {c["name"]: c for c in json.loads((tmp_path / "d.json").read_text())}
    assert {"platform", "cpu", "int8", "runtimes", "memory", "camera", "model"} <= set(checks)
    assert checks["model"]["status"] == "ok" and "onnxruntime" in checks["model"]["detail"]


def test_doctor_fails_on_a_corrupt_model(exported, tmp_path):
    out, _ = exported
    bad = tmp_path / "bad.onnx"
    bad.write_bytes((out / "model.onnx").read_bytes()[:4000])
    proc = run_cli("doctor", str(bad))
    assert proc.returncode == 1
    assert any(line.startswith("FAIL  model") and "onnxruntime cannot load" in line for line in proc.stdout.splitlines())
