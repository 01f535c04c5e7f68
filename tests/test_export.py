"""Export to ONNX / OpenVINO from a tiny real checkpoint, verification, baked preprocessing, bad input."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import run_cli
from edgekit.export.core import ExportConfig, export

# Tier: exports, calibrates and verifies real artifacts.
pytestmark = pytest.mark.slow


def test_every_artifact_is_written_with_its_sidecar_and_verified(exported):
    out, result = exported
    names = {p.name for p in out.iterdir()}
    for model in ("model.onnx", "model_int8.onnx", "model.xml", "model_fp16.xml", "model_int8.xml"):
        assert model in names and model + ".edgekit.json" in names
    assert {"model.bin", "model_fp16.bin", "model_int8.bin"} <= names
    assert not any(n.startswith(".edgekit-export-") for n in names)  # staging folder cleaned up
    assert result.verify_ok and "model_int8.onnx" in result.verify_table
    sidecar = json.loads((out / "model_int8.onnx.edgekit.json").read_text())
    assert sidecar["spec"]["precision"] == "int8"
    assert sidecar["spec"]["quantization"]["calibration"]["samples"] == 64
    assert sidecar["artifact"]["opset"] == 17


def test_onnx_metadata_and_openvino_rt_info_carry_the_spec(exported, trained):
    from edgekit.export.onnx_format import read_metadata_spec
    from edgekit.export.openvino_format import read_rt_info_spec
    from edgekit.models.checkpoint import load_checkpoint

    out, _ = exported
    labels = load_checkpoint(trained["checkpoint"]).spec.labels
    onnx_spec = read_metadata_spec(out / "model_int8.onnx")
    assert onnx_spec.labels == labels and onnx_spec.precision == "int8"
    assert onnx_spec.quantization["scheme"] == "nncf-qdq"  # the default ONNX INT8 route
    assert onnx_spec.quantization["calibration"]["samples"] > 0 and onnx_spec.quantization["keep_float"] == []
    ov_spec = read_rt_info_spec(out / "model_fp16.xml")
    assert ov_spec.labels == labels and ov_spec.precision == "fp16"
    # No stale copy of the FP32 ONNX's spec from convert_model's "framework" section.
    assert "framework" not in (out / "model_int8.xml").read_text()


def test_openvino_int8_ir_writes_each_constant_once(exported):
    import re

    out, _ = exported
    xml = (out / "model_int8.xml").read_text()
    consts = re.findall(r'type="Const"[^>]*>\s*<data element_type="(\w+)" shape="([^"]*)" offset="(\d+)" size="(\d+)"', xml)
    # The serializer stores equal bytes once, so two Const layers at one offset are the same constant twice.
    assert len(consts) > 50 and len(set(consts)) == len(consts)
    assert xml.count('type="FakeQuantize"') > 5


def test_onnx_is_pinned_and_int8_is_qdq_and_small(exported):
    import onnx

    out, _ = exported
    fp32, int8 = onnx.load(str(out / "model.onnx")), onnx.load(str(out / "model_int8.onnx"))
    assert fp32.ir_version == 8 and {o.domain: o.version for o in fp32.opset_import}[""] == 17
    # Only the default domain: older onnxruntime builds refuse models importing newer ai.onnx.ml etc.
    assert [(o.domain, o.version) for o in int8.opset_import] == [("", 17)]
    ops = {n.op_type for n in int8.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert (out / "model_int8.onnx").stat().st_size < 0.35 * (out / "model.onnx").stat().st_size
    assert not (out / "model.onnx.data").exists()  # one self-contained file


def test_onnx_runs_without_torch_and_predicts_like_pytorch(exported, trained, mini_data):
    from edgekit.core.spec import preprocess
    from edgekit.models.checkpoint import load_checkpoint
    from edgekit.core.data import load_table
    from edgekit.models.loading import load_model, run_model

    out, _ = exported
    ckpt = load_checkpoint(trained["checkpoint"])
    table = load_table(mini_data)
    test = table.indices("test")[:50]
    expected = run_model(load_model(ckpt), [np.stack([preprocess(table.image(i), ckpt.spec, "GRAY")
                                                      for i in test])]).argmax(1)
    code = (
        "import sys; sys.modules['torch'] = None\n"  # any torch import now fails
        "import json, numpy as np, onnxruntime as ort\n"
        "from edgekit.core.spec import ModelSpec, preprocess\n"
        "from edgekit.core.data import load_table\n"
        f"spec = ModelSpec.from_dict(json.load(open({str(out / 'model.onnx.edgekit.json')!r}))['spec'])\n"
        f"table = load_table({str(mini_data)!r})\n"
        "session = ort.InferenceSession(" + repr(str(out / "model.onnx")) + ", providers=['CPUExecutionProvider'])\n"
        "preds = [int(session.run(None, {'images': preprocess(table.image(i), spec, table.color)[None]})[0].argmax())\n"
        "         for i in table.indices('test')[:50]]\n"
        "print(' '.join(map(str, preds)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert list(map(int, proc.stdout.split())) == expected.tolist()


def test_baked_preprocessing_equals_python_preprocessing(trained, tmp_path):
    import onnxruntime as ort

    from edgekit.core.spec import preprocess
    from edgekit.models.checkpoint import load_checkpoint

    export(ExportConfig(checkpoint=str(trained["checkpoint"]), out=str(tmp_path), bake_preprocess=True,
                        input_color="BGR", dynamic_batch=True, verify=False))
    spec = load_checkpoint(trained["checkpoint"]).spec
    baked = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert baked.get_inputs()[0].type == "tensor(uint8)"
    rng = np.random.default_rng(0)
    frames = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    frames[..., 0] = 0  # a strongly coloured blue channel makes a BGR/RGB mix-up visible
    baked_logits = baked.run(None, {"images": frames})[0]
    export(ExportConfig(checkpoint=str(trained["checkpoint"]), out=str(tmp_path / "plain"), verify=False,
                        dynamic_batch=True))
    plain = ort.InferenceSession(str(tmp_path / "plain" / "model.onnx"), providers=["CPUExecutionProvider"])
    tensors = np.stack([preprocess(f, spec, source_color="BGR") for f in frames])
    np.testing.assert_allclose(baked_logits, plain.run(None, {"images": tensors})[0], atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("input_color", ["BGR", "RGB"])
def test_baked_module_reproduces_preprocess_exactly(input_color):
    """The in-graph steps alone (identity network): same tensor as edgekit.core.spec.preprocess, colour order included."""
    import torch

    from edgekit.export.onnx_format import BakedPreprocess
    from edgekit.core.spec import ModelSpec, preprocess

    spec = ModelSpec(arch="x", labels=("a", "b"), input_size=(8, 8))
    frames = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 3), dtype=np.uint8)
    baked = BakedPreprocess.wrap(torch.nn.Identity(), spec, input_color)
    with torch.no_grad():
        got = baked(torch.from_numpy(frames)).numpy()
    want = np.stack([preprocess(f, spec, source_color=input_color) for f in frames])
    np.testing.assert_allclose(got, want, atol=1e-5)
    swapped = np.stack([preprocess(f, spec, source_color="RGB" if input_color == "BGR" else "BGR") for f in frames])
    assert np.abs(got - swapped).max() > 0.1


def test_verify_breaks_with_nonzero_exit_when_a_model_does_not_match(exported, trained, mini_data, tmp_path):
    import shutil

    out, _ = exported
    # An INT8 model presented as FP32 must fail the FP32 logit tolerance.
    shutil.copy(out / "model_int8.onnx", tmp_path / "fake.onnx")
    sidecar = json.loads((out / "model.onnx.edgekit.json").read_text())
    (tmp_path / "fake.onnx.edgekit.json").write_text(json.dumps(sidecar))
    proc = run_cli("verify", str(tmp_path / "fake.onnx"), "--reference", str(trained["checkpoint"]),
                   "--data", str(mini_data), "--images", "100")
    assert proc.returncode == 1
    assert "FAIL" in proc.stdout and proc.stderr.strip().splitlines()[-1].startswith("error: ")


def test_verify_reference_is_pytorch_float64_and_the_fp32_row_never_gates(exported, trained, mini_data):
    from edgekit.export.verify import Row, compare, failures, verify

    out, _ = exported
    rows, table = verify([out / "model.onnx"], trained["checkpoint"], str(mini_data), images=100)
    reference, pytorch_fp32, onnx_fp32 = rows
    assert reference.precision == "fp64" and reference.logits.dtype == np.float64
    assert not pytorch_fp32.gates and "not gated" in pytorch_fp32.status
    # Two FP32 computations of the same network, but not bit-identical to the float64 one.
    assert 0 < pytorch_fp32.max_abs < 1e-3 and onnx_fp32.max_abs <= 1e-4 and onnx_fp32.status == "ok"
    assert "PyTorch float64" in table and not failures(rows)
    # The same logits 1.0 off: a gated row fails, the framework row only says so.
    shifted = [Row("gated", "fp32", reference.logits + 1.0), Row("framework", "fp32", reference.logits + 1.0, gates=False)]
    compare(reference.logits, shifted, None, False)
    assert failures(shifted) == [shifted[0]] and "beyond the fp32 tolerance" in shifted[1].status


def test_missing_openvino_bin_is_one_line(exported, trained, mini_data, tmp_path):
    import shutil

    out, _ = exported
    for name in ("model.xml", "model.xml.edgekit.json"):
        shutil.copy(out / name, tmp_path / name)
    proc = run_cli("verify", str(tmp_path / "model.xml"), "--reference", str(trained["checkpoint"]),
                   "--data", str(mini_data))
    assert proc.returncode == 2 and "model.bin is missing" in proc.stderr and "Traceback" not in proc.stderr


def assert_clean_failure(proc, out, fragment):
    assert proc.returncode != 0
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and fragment in last, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not out.exists() or not any(out.iterdir()), "half-written artifacts left behind"


def test_unknown_format_suggests(trained, tmp_path):
    proc = run_cli("export", str(trained["checkpoint"]), "--format", "onxx", "--out", str(tmp_path / "o"))
    assert_clean_failure(proc, tmp_path / "o", "Did you mean 'onnx'")


def test_truncated_checkpoint_writes_nothing(trained, tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(trained["checkpoint"].read_bytes()[:4096])
    proc = run_cli("export", str(broken), "--out", str(tmp_path / "o"))
    assert_clean_failure(proc, tmp_path / "o", "broken.pt")


def test_checkpoint_without_spec(tmp_path):
    import torch

    torch.save({"state_dict": {}}, tmp_path / "plain.pt")
    proc = run_cli("export", str(tmp_path / "plain.pt"), "--out", str(tmp_path / "o"))
    assert_clean_failure(proc, tmp_path / "o", "not an edgekit checkpoint")


def test_output_path_that_is_a_file(trained, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    proc = run_cli("export", str(trained["checkpoint"]), "--out", str(blocker / "sub"))
    assert proc.returncode == 2 and "cannot create output folder" in proc.stderr


def test_calibration_smaller_than_a_batch_is_an_error(trained, mini_data, tmp_path):
    proc = run_cli("export", str(trained["checkpoint"]), "--int8", "--data", str(mini_data), "--calib-size", "8",
                   "--calib-batch", "16", "--out", str(tmp_path / "o"))
    assert_clean_failure(proc, tmp_path / "o", "smaller than one batch")


def test_few_calibration_images_warn(trained, mini_data, tmp_path):
    proc = run_cli("export", str(trained["checkpoint"]), "--int8", "--data", str(mini_data), "--calib-size", "32",
                   "--calib-batch", "16", "--no-verify", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    assert "calibrating on 32 images" in proc.stderr
    assert (tmp_path / "o" / "model_int8.onnx").is_file()


def test_an_artifact_that_misses_its_gate_costs_only_itself(trained, mini_data, tmp_path):
    """With the INT8 gate out of reach, INT8 is reported with its reason and what to try, not written; the FP32
    artifacts still are, and the CLI exits 1 with one error line."""
    code = (
        "import sys\n"
        "from edgekit.export.verify import TOLERANCES\n"
        "TOLERANCES['int8']['min_agreement'] = 1.01  # no INT8 model can reach this\n"
        "from edgekit.cli import main\n"
        f"sys.argv = ['edgekit', 'export', {str(trained['checkpoint'])!r}, '--format', 'onnx', '--format',\n"
        f"            'openvino', '--int8', '--data', {str(mini_data)!r}, '--calib-size', '64', '--calib-batch',\n"
        f"            '16', '--verify-images', '100', '--out', {str(tmp_path)!r}]\n"
        "main()\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    names = {p.name for p in tmp_path.iterdir()}
    assert {"model.onnx", "model.onnx.edgekit.json", "model.xml", "model.bin"} <= names
    assert not any("int8" in n for n in names) and not any(n.startswith(".edgekit-export-") for n in names)
    for model in ("model_int8.onnx", "model_int8.xml"):
        assert f"{model} not written: agreement" in proc.stderr and "Try: " in proc.stderr
    assert "FAIL: agreement" in proc.stdout  # the verification table shows the failed rows too
    last = proc.stderr.strip().splitlines()[-1]
    assert last == "error: 2 artifact(s) missed their gate and were not written; 2 written"
    assert "Traceback" not in proc.stderr


def test_openvino_int8_records_its_nncf_recipe(exported):
    out, _ = exported
    recipe = json.loads((out / "model_int8.xml.edgekit.json").read_text())["spec"]["quantization"]
    assert recipe["scheme"] == "nncf-ptq" and recipe["bias_correction"] == "full"


@pytest.mark.parametrize("field, value", [("ov_int8", "bogus"), ("ov_bias_correction", "quick"),
                                          ("calib_method", "foo"), ("activation_type", "u4")])
def test_export_config_refuses_unknown_names_before_any_work(trained, field, value):
    from edgekit.core.errors import UnknownNameError

    with pytest.raises(UnknownNameError, match=repr(value)):
        ExportConfig(checkpoint=str(trained["checkpoint"]), **{field: value})
