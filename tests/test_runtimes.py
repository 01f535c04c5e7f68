"""The runtime layer on real exported models: same answers everywhere, lazy imports, torch-free ONNX path,
thread settings, and one clean line for bad input."""
import json
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from edgekit.core.errors import BadInputError, UnknownNameError
from edgekit.runtimes import RuntimeOptions, detect_format, load_runtime


def real_batch(mini_data, spec, count=16):
    from edgekit.core.spec import preprocess
    from edgekit.core.data import load_table

    table = load_table(mini_data)
    return np.stack([preprocess(table.image(i), spec, table.color) for i in table.indices("test")[:count]])


def run_python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)


def test_importing_the_runtime_layer_and_harness_imports_no_framework():
    proc = run_python("import sys, edgekit.runtimes, edgekit.runtimes.base, edgekit.benchmarks.harness, "
                      "edgekit.benchmarks.worker, edgekit.cli\n"
                      "print(sorted(m for m in ('torch', 'onnxruntime', 'openvino') if m in sys.modules))")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def test_every_runtime_gives_the_pytorch_logits(exported, trained, mini_data):
    out, _ = exported
    reference = load_runtime(trained["checkpoint"])
    x = real_batch(mini_data, reference.spec)
    expected = reference.infer(x)
    for path, runtime in ((out / "model.onnx", None), (out / "model.xml", None), (out / "model.onnx", "openvino")):
        rt = load_runtime(path, runtime, RuntimeOptions(threads=1))
        got = rt.infer(x)  # 16 images through a batch-1 model: fed in chunks
        assert got.shape == expected.shape
        np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4, err_msg=f"{path.name} on {rt.name}")
        rt.close()


def test_threads_and_backend_options_reach_the_backend(exported):
    out, _ = exported
    ort_rt = load_runtime(out / "model.onnx", options=RuntimeOptions(threads=1, graph_optimization="basic"))
    assert ort_rt.session.get_session_options().intra_op_num_threads == 1
    assert ort_rt.describe()["graph_optimization"] == "basic"
    ov_rt = load_runtime(out / "model_int8.xml", options=RuntimeOptions(threads=1, batch=4))
    assert ov_rt.describe()["compiled"]["INFERENCE_NUM_THREADS"] == "1"
    assert tuple(ov_rt.compiled.input(0).shape)[0] == 4  # reshaped to the requested batch
    assert ov_rt.infer(np.zeros((6, 3, 32, 32), np.float32)).shape == (6, len(ov_rt.spec.labels))  # padded chunks


def test_onnxruntime_path_runs_end_to_end_without_torch(exported, trained, mini_data):
    """Runtime + spec preprocessing + the benchmark worker, with every torch import made to fail."""
    out, _ = exported
    expected = load_runtime(trained["checkpoint"]).infer(real_batch(mini_data, load_runtime(out / "model.onnx").spec,
                                                                    count=1000)).argmax(1)
    code = (
        "import sys; sys.modules['torch'] = None\n"
        "from edgekit.benchmarks.worker import run_job\n"
        f"job = {{'model': {str(out / 'model.onnx')!r}, 'runtime': 'onnxruntime', 'warmup': 2, 'min_runs': 5,\n"
        "       'min_seconds': 0, 'data': " + repr(str(mini_data)) + ", 'images': 0, 'evaluate': True,\n"
        "       'options': {'threads': 1, 'providers': ['CPUExecutionProvider']}}\n"
        "result = run_job(job)\n"
        "print(result['status'], result['torch_imported'], ' '.join(map(str, result['predictions'])))\n"
    )
    proc = run_python(code)
    assert proc.returncode == 0, proc.stderr
    status, torch_imported, *preds = proc.stdout.split()
    assert status == "ok" and torch_imported == "False"
    assert np.mean(np.array(preds, int) == expected) == 1.0


def test_detect_format_reads_the_file_not_just_the_name(tmp_path, exported):
    out, _ = exported
    assert detect_format(out / "model.onnx") == "onnx" and detect_format(out / "model.xml") == "openvino"
    text = tmp_path / "notes.onnx"
    text.write_text("hello")
    with pytest.raises(BadInputError, match="not an ONNX model"):
        detect_format(text)
    with pytest.raises(BadInputError, match="expected .pt, .onnx or .xml"):
        detect_format(out / "model.onnx.edgekit.json")
    with pytest.raises(BadInputError, match="model not found"):
        detect_format(tmp_path / "missing.onnx")


def test_corrupt_onnx_and_missing_bin_are_one_line_errors(tmp_path, exported):
    out, _ = exported
    data = (out / "model.onnx").read_bytes()
    (tmp_path / "cut.onnx").write_bytes(data[: len(data) // 3])
    with pytest.raises(BadInputError, match="onnxruntime cannot load"):
        load_runtime(tmp_path / "cut.onnx")
    shutil.copy(out / "model.xml", tmp_path / "model.xml")
    with pytest.raises(BadInputError, match="model.bin is missing"):
        load_runtime(tmp_path / "model.xml")


def test_wrong_runtime_shape_and_names(exported):
    out, _ = exported
    with pytest.raises(UnknownNameError, match="Did you mean 'openvino'"):
        load_runtime(out / "model.onnx", "openvnio")
    with pytest.raises(BadInputError, match="onnxruntime cannot run openvino models"):
        load_runtime(out / "model.xml", "onnxruntime")
    rt = load_runtime(out / "model.onnx")
    with pytest.raises(BadInputError, match=r"expected \(N, 3, 32, 32\)"):
        rt.infer(np.zeros((1, 1, 28, 28), np.float32))
    with pytest.raises(BadInputError, match="dtype float64"):
        rt.infer(np.zeros((1, 3, 32, 32)))


def test_missing_backend_names_the_extra(exported):
    out, _ = exported
    proc = run_python("import sys; sys.modules['openvino'] = None\n"
                      "from edgekit.core.errors import MissingExtraError\n"
                      "from edgekit.runtimes import load_runtime\n"
                      "try:\n"
                      f"    load_runtime({str(out / 'model.xml')!r})\n"
                      "except MissingExtraError as exc:\n"
                      "    print(exc)\n")
    assert proc.returncode == 0, proc.stderr
    assert 'pip install "edgekit[openvino]"' in proc.stdout


@pytest.mark.parametrize("model", ["model.onnx", "model.xml"])
@pytest.mark.parametrize("change, fragment", [
    ({"labels": ["a", "b"]}, "the graph gives 10 outputs but its spec has 2 labels"),
    ({"input_size": [64, 64]}, "the graph takes [1, 3, 32, 32] but its spec describes [1, 3, 64, 64]"),
])
def test_a_spec_that_does_not_fit_the_graph_is_refused_at_load(exported, tmp_path, model, change, fragment):
    """A sidecar and an embedded spec that agree with each other but not with the graph: one clean error."""
    from edgekit.core.spec import ModelSpec
    from edgekit.export.onnx_format import set_metadata

    out, _ = exported
    for name in (model, model.replace(".xml", ".bin")):
        shutil.copy(out / name, tmp_path / name)
    sidecar = json.loads((out / f"{model}.edgekit.json").read_text())
    sidecar["spec"].update(change)
    (tmp_path / f"{model}.edgekit.json").write_text(json.dumps(sidecar))
    spec = ModelSpec.from_dict(sidecar["spec"])
    if model.endswith(".onnx"):  # the copy inside the file must agree too, or the sidecar check fires first
        import onnx

        proto = onnx.load(str(tmp_path / model))
        set_metadata(proto, spec)
        onnx.save(proto, str(tmp_path / model))
    else:
        import openvino as ov

        from edgekit.core.artifacts import RT_INFO_PATH

        ir = ov.Core().read_model(str(tmp_path / model))
        ir.set_rt_info(spec.to_json(), RT_INFO_PATH)
        ov.save_model(ir, str(tmp_path / "fixed.xml"), compress_to_fp16=False)
        model = "fixed.xml"
        (tmp_path / f"{model}.edgekit.json").write_text(json.dumps(sidecar))
    with pytest.raises(BadInputError, match=re.escape(fragment)):
        load_runtime(tmp_path / model)


def test_a_stale_sidecar_that_contradicts_the_model_is_refused(exported, tmp_path):
    out, _ = exported
    shutil.copy(out / "model.onnx", tmp_path / "model.onnx")
    sidecar = json.loads((out / "model.onnx.edgekit.json").read_text())
    sidecar["spec"]["labels"] = list(reversed(sidecar["spec"]["labels"]))  # same count, other names
    (tmp_path / "model.onnx.edgekit.json").write_text(json.dumps(sidecar))
    with pytest.raises(BadInputError, match="model.onnx.edgekit.json and the spec inside model.onnx disagree on labels"):
        load_runtime(tmp_path / "model.onnx")
