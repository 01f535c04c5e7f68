"""Compression beyond PTQ on the tiny model: channel and unstructured pruning (edgekit prune)."""
from __future__ import annotations

import json

import numpy as np
import torch
import pytest

from edgekit.core.errors import BadInputError
from edgekit.models.checkpoint import load_checkpoint
from edgekit.models.loading import load_model, run_model
from tests.conftest import run_cli


@pytest.fixture(scope="session")
def channel_pruned(trained, mini_data, tmp_path_factory) -> dict:
    from edgekit.training.prune import PruneConfig, prune_sweep

    out = tmp_path_factory.mktemp("prune")
    return prune_sweep(PruneConfig(checkpoint=str(trained["checkpoint"]), data=str(mini_data), method="channel",
                                   ratios=(0.5,), finetune_epochs=1, limit_train=64, limit_test=100, batch_size=32,
                                   out=str(out), threads=2))


def test_channel_pruning_shrinks_the_network_and_keeps_the_outputs(channel_pruned, trained):
    base, pruned, tuned = channel_pruned["rows"]
    assert (base["stage"], pruned["stage"], tuned["stage"]) == ("base", "pruned", "fine-tuned")
    assert pruned["params"] < 0.5 * base["params"] and pruned["macs"] < 0.6 * base["macs"]
    assert tuned["size_mb"] < 0.5 * base["size_mb"]
    ckpt = load_checkpoint(tuned["path"])
    assert ckpt.model["pruning"]["method"] == "channel" and ckpt.model["pruning"]["plan"]
    assert ckpt.spec.labels == load_checkpoint(trained["checkpoint"]).spec.labels
    model = load_model(ckpt)  # the plan is replayed on a fresh registry model, then the weights load
    assert sum(p.numel() for p in model.parameters()) == tuned["params"]
    x = np.random.default_rng(0).normal(size=(3, 3, 32, 32)).astype(np.float32)
    assert run_model(model, [x]).shape == (3, ckpt.spec.num_outputs)


def test_a_channel_pruned_checkpoint_exports_quantizes_and_runs(channel_pruned, mini_data, tmp_path):
    from edgekit.export.core import ExportConfig, export
    from edgekit.runtimes.base import load_runtime

    path = channel_pruned["rows"][-1]["path"]
    export(ExportConfig(checkpoint=path, formats=("onnx",), data=str(mini_data), verify_images=100,
                        out=str(tmp_path / "onnx")))
    x = np.random.default_rng(1).normal(size=(1, 3, 32, 32)).astype(np.float32)
    runtime = load_runtime(tmp_path / "onnx" / "model.onnx", "onnxruntime")
    try:
        np.testing.assert_allclose(runtime.infer(x), run_model(load_model(load_checkpoint(path)), [x]), atol=1e-4)
    finally:
        runtime.close()
    proc = run_cli("quantize", path, "--data", str(mini_data), "--calib-batches", "2", "--batch", "16",
                   "--limit-test", "32", "--out", str(tmp_path / "int8.pt"))
    assert (tmp_path / "int8.pt").is_file(), proc.stderr
    int8 = load_checkpoint(tmp_path / "int8.pt")
    assert int8.model["pruning"]["plan"] and int8.spec.precision == "int8"
    assert run_model(load_model(int8), [x]).shape == (1, int8.spec.num_outputs)


def test_unstructured_pruning_from_the_cli_reports_sparsity_not_savings(trained, mini_data, tmp_path):
    out = tmp_path / "l1"
    proc = run_cli("prune", str(trained["checkpoint"]), "--data", str(mini_data), "--method", "l1-unstructured",
                   "--ratios", "0.6", "--protect", "features.0.0", "--limit-test", "50", "--threads", "2",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "l1-unstructured pruning" in proc.stdout and (out / "prune.png").is_file()
    base, pruned = json.loads((out / "prune.json").read_text())["rows"]
    assert pruned["sparsity"] == pytest.approx(0.6, abs=0.01)  # the stem is protected: a hair under 60%
    assert pruned["params"] == base["params"]  # nothing removed: the zeros are still stored
    assert pruned["size_mb"] == pytest.approx(base["size_mb"], rel=0.02)
    assert pruned["gzip_mb"] < 0.75 * base["gzip_mb"]
    model = load_model(load_checkpoint(pruned["path"]))
    assert not any(name.endswith("_orig") for name in model.state_dict())  # masks made permanent
    assert bool((model.get_submodule("features.0.0").weight != 0).all())
    assert float((model.get_submodule("classifier.1").weight == 0).float().mean()) > 0.3


@pytest.mark.parametrize("options, message", [
    ({"ratios": (0.0,)}, "--ratios"),
    ({"ratios": (1.0,)}, "--ratios"),
    ({"ratios": (0.3, 0.3)}, "each ratio once"),
    ({"ratios": ()}, "at least one ratio"),
    ({"method": "random"}, "--method"),
    ({"finetune_epochs": -1}, "--finetune-epochs"),
])
def test_prune_config_refuses_bad_numbers(options, message):
    from edgekit.training.prune import PruneConfig

    with pytest.raises(BadInputError, match=message):
        PruneConfig(checkpoint="x.pt", data="d", **options)


def test_prune_refuses_unknown_protected_layers_and_int8_checkpoints(trained, quantized, mini_data, tmp_path):
    proc = run_cli("prune", str(trained["checkpoint"]), "--data", str(mini_data), "--protect", "features.99",
                   "--out", str(tmp_path / "p"))
    assert proc.returncode == 2 and "no module named 'features.99'" in proc.stderr
    assert "Traceback" not in proc.stderr
    proc = run_cli("prune", quantized["int8"]["path"], "--data", str(mini_data), "--out", str(tmp_path / "q"))
    assert proc.returncode == 2 and "prune the FP32 checkpoint" in proc.stderr


@pytest.fixture(scope="session")
def small_cnn(mini_data, tmp_path_factory) -> dict:
    from edgekit.training.trainer import TrainConfig, train

    return train(TrainConfig(data=str(mini_data), model="small_cnn", input_size=28, epochs=1, batch_size=32,
                             limit=300, out=str(tmp_path_factory.mktemp("small_cnn")), threads=2))


def test_small_cnn_is_a_grey_network_whose_linear_layer_dominates(small_cnn):
    ckpt = load_checkpoint(small_cnn["checkpoint"])
    assert (ckpt.spec.channels, ckpt.spec.color, ckpt.spec.input_size) == (1, "GRAY", (28, 28))
    assert ckpt.spec.mean == (0.5,) and ckpt.spec.std == (0.5,)
    model = load_model(ckpt)
    total = sum(p.numel() for p in model.parameters())
    assert model.classifier[1].weight.numel() / total > 0.9
    assert small_cnn["report"]["config"]["weights"] == "none"  # auto: small_cnn has no ImageNet weights


def test_dynamic_int8_shrinks_the_small_cnn_and_keeps_its_predictions(small_cnn, mini_data, tmp_path):
    from edgekit.training.quantize import QuantizeConfig, quantize_checkpoint

    result = quantize_checkpoint(QuantizeConfig(checkpoint=str(small_cnn["checkpoint"]), data=str(mini_data),
                                                mode="dynamic", limit_test=200, out=str(tmp_path / "dyn.pt")))
    assert result["size_ratio"] < 0.4
    assert result["top1_agreement"] > 0.95


def test_a_grey_small_cnn_exports_to_onnx_and_openvino_and_verifies(small_cnn, mini_data, tmp_path):
    from edgekit.export.core import ExportConfig, export

    result = export(ExportConfig(checkpoint=str(small_cnn["checkpoint"]), formats=("onnx", "openvino"),
                                 data=str(mini_data), verify_images=100, out=str(tmp_path)))
    assert {a.path.name for a in result.artifacts} >= {"model.onnx", "model.xml"}
    assert result.verify_ok, result.failed
    assert len(result.verify_rows) >= 3  # the PyTorch reference + both artifacts


def test_onnx_dynamic_int8_quantizes_the_small_cnns_linear_layers_without_calibration(small_cnn, tmp_path):
    """--onnx-int8 dynamic: MatMul/Gemm weights in INT8 (MatMulInteger at run time), convolutions left FP32, no
    data needed; the file shrinks by about what the linear layers hold and verify still passes."""
    import onnx

    proc = run_cli("export", str(small_cnn["checkpoint"]), "--format", "onnx", "--int8", "--onnx-int8", "dynamic",
                   "--verify-images", "100", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    ops = [node.op_type for node in onnx.load(str(tmp_path / "model_int8.onnx")).graph.node]
    assert "MatMulInteger" in ops and "Conv" in ops and "QuantizeLinear" not in ops
    assert (tmp_path / "model_int8.onnx").stat().st_size < 0.4 * (tmp_path / "model.onnx").stat().st_size
    recipe = json.loads((tmp_path / "model_int8.onnx.edgekit.json").read_text())["spec"]["quantization"]
    assert recipe["scheme"] == "onnxruntime-dynamic" and recipe["quantized_nodes"] >= 1
    bad = run_cli("export", str(small_cnn["checkpoint"]), "--format", "onnx", "--format", "openvino", "--int8",
                  "--onnx-int8", "dynamic", "--ov-int8", "qdq", "--out", str(tmp_path / "b"))
    assert bad.returncode == 2 and "dynamic ONNX INT8 has none" in bad.stderr.strip().splitlines()[-1]


def test_distillation_loss_is_zero_for_a_student_equal_to_its_teacher_and_pure_hard_loss_at_alpha_0(trained):
    from edgekit.training.distill import Distiller

    ckpt = load_checkpoint(trained["checkpoint"])
    model = load_model(ckpt)
    hard = torch.nn.CrossEntropyLoss()
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(8, 3, 32, 32)).astype(np.float32))
    y = torch.arange(8) % len(ckpt.spec.labels)
    with torch.no_grad():
        logits = model(x)
        same = Distiller(model, ckpt.spec, ckpt.spec, temperature=4.0, alpha=1.0, hard_loss=hard)
        assert float(same(x, logits, y)) == pytest.approx(0.0, abs=1e-5)
        assert float(same(x, logits + torch.randn_like(logits), y)) > 0.01
        hard_only = Distiller(model, ckpt.spec, ckpt.spec, temperature=4.0, alpha=0.0, hard_loss=hard)
        assert float(hard_only(x, logits, y)) == pytest.approx(float(hard(logits, y)))


def test_a_teacher_sees_the_students_image_in_its_own_preprocessing(trained, small_cnn, mini_data):
    """Grey 28x28 normalised for the student -> RGB 32x32 normalised for the MobileNetV2 teacher."""
    from edgekit.core.data import load_table
    from edgekit.core.spec import preprocess
    from edgekit.training.distill import Distiller

    teacher, student = load_checkpoint(trained["checkpoint"]), load_checkpoint(small_cnn["checkpoint"])
    distiller = Distiller(load_model(teacher), teacher.spec, student.spec, 4.0, 0.9, torch.nn.CrossEntropyLoss())
    table = load_table(mini_data)
    images = [table.image(i) for i in range(4)]
    x = torch.from_numpy(np.stack([preprocess(im, student.spec, table.color) for im in images]))
    direct = np.stack([preprocess(im, teacher.spec, table.color) for im in images])
    mapped = distiller.teacher_input(x).numpy()
    assert mapped.shape == direct.shape
    # Resizing 28 -> 32 instead of source -> 32 blurs a little; the images are otherwise the same.
    assert np.abs(mapped - direct).mean() < 0.1 * np.abs(direct).mean()


def test_train_with_a_teacher_records_it_and_refuses_one_with_other_labels(trained, small_cnn, mini_data,
                                                                         image_folder, tmp_path):
    proc = run_cli("train", "--data", str(mini_data), "--model", "small_cnn", "--imgsz", "28", "--epochs", "1",
                   "--limit", "100", "--teacher", str(trained["checkpoint"]), "--kd-temperature", "3",
                   "--kd-alpha", "0.5", "--threads", "2", "--out", str(tmp_path / "kd"))
    assert proc.returncode == 0, proc.stderr
    distillation = json.loads((tmp_path / "kd" / "metrics.json").read_text())["distillation"]
    assert distillation["teacher"] == str(trained["checkpoint"]) and distillation["temperature"] == 3.0
    assert distillation["alpha"] == 0.5 and len(distillation["teacher_sha256"]) == 64
    proc = run_cli("train", "--data", str(image_folder), "--model", "small_cnn", "--imgsz", "28", "--epochs", "1",
                   "--teacher", str(trained["checkpoint"]), "--out", str(tmp_path / "bad"))
    assert proc.returncode == 2 and "not the student's" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("train", "--data", str(mini_data), "--model", "small_cnn", "--teacher", str(tmp_path / "none.pt"),
                   "--out", str(tmp_path / "bad2"))
    assert proc.returncode == 2 and "no such checkpoint" in proc.stderr
    proc = run_cli("train", "--data", str(mini_data), "--model", "small_cnn", "--weights", "imagenet",
                   "--out", str(tmp_path / "bad3"))
    assert proc.returncode == 2 and "no pretrained weights" in proc.stderr


@pytest.fixture(scope="session")
def qat(trained, mini_data, tmp_path_factory) -> dict:
    from edgekit.training.quantize import QuantizeConfig, quantize_checkpoint

    out = tmp_path_factory.mktemp("qat") / "model_qat.pt"
    return quantize_checkpoint(QuantizeConfig(checkpoint=str(trained["checkpoint"]), data=str(mini_data), mode="qat",
                                              qat_epochs=2, limit_train=128, batch_size=32, limit_test=100,
                                              out=str(out), threads=2))


def test_qat_fine_tunes_with_fake_quantization_into_an_ordinary_int8_checkpoint(qat):
    import torch.ao.nn.quantized as nnq

    ckpt = load_checkpoint(qat["int8"]["path"])
    recipe = ckpt.spec.quantization
    assert recipe["scheme"] == "pytorch-fx-static" and ckpt.spec.precision == "int8"
    assert recipe["training"]["method"] == "qat" and recipe["training"]["images"] == 128
    assert [h["epoch"] for h in recipe["training"]["history"]] == [1, 2]
    assert all(np.isfinite(h["train_loss"]) for h in recipe["training"]["history"])
    model = load_model(ckpt)
    assert any(isinstance(m, nnq.Conv2d) for m in model.modules())
    stem = model.get_submodule("features.0.0")  # Conv-BN before ReLU6: a range inside [0, 6] survives QAT
    assert stem.zero_point == 0 and 0 < stem.scale * 255 <= 6.0 + 1e-6
    assert model.get_submodule("classifier.1").weight_int8.dtype == torch.int8  # float logits after QAT too
    assert qat["top1_agreement"] is not None and qat["test_images"] == 100


def test_qat_starts_from_the_post_training_ranges(trained):
    """Before training, every activation range of the QAT model is the one post-training calibration gives on
    the same images (mean of per-image min/max), so QAT cannot start below PTQ."""
    import torch.ao.nn.quantized as nnq

    from edgekit.models.loading import convert_static, prepare_qat, prepare_static
    from edgekit.training.quantize import _start_from_calibrated_ranges

    ckpt = load_checkpoint(trained["checkpoint"])
    fp32 = load_model(ckpt)
    rng = np.random.default_rng(0)
    batches = [rng.normal(0, 1, ckpt.spec.input_shape(8)).astype(np.float32) * scale for scale in (0.5, 2.0, 1.0)]
    static = prepare_static(fp32, ckpt.spec, "x86")
    with torch.no_grad():
        for batch in batches:
            static(torch.from_numpy(batch))
    qat = prepare_qat(fp32, ckpt.spec, "x86")
    qat.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)
    assert _start_from_calibrated_ranges(qat, iter(batches)) == 24 and qat.training
    ptq_scales = {name: m.scale for name, m in convert_static(static).named_modules() if isinstance(m, nnq.Conv2d)}
    qat_scales = {name: m.scale for name, m in convert_static(qat).named_modules() if isinstance(m, nnq.Conv2d)}
    assert len(ptq_scales) > 20 and ptq_scales.keys() == qat_scales.keys()
    for name, scale in ptq_scales.items():
        assert qat_scales[name] == pytest.approx(scale, rel=1e-4), name


def test_qat_self_distillation_learns_the_fp32_models_outputs(trained, mini_data, qat, tmp_path):
    """With --qat-kd-alpha 1 the loss is the KL divergence from the FP32 model's own outputs, which an INT8
    copy of that model starts close to: far below the labels-only cross-entropy of the same QAT."""
    from edgekit.training.quantize import QuantizeConfig, format_comparison, quantize_checkpoint

    result = quantize_checkpoint(QuantizeConfig(checkpoint=str(trained["checkpoint"]), data=str(mini_data),
                                                mode="qat", qat_epochs=1, limit_train=128, batch_size=32,
                                                limit_test=50, qat_kd_alpha=1.0, qat_kd_temperature=2.0,
                                                out=str(tmp_path / "kd.pt"), threads=2))
    training = load_checkpoint(result["int8"]["path"]).spec.quantization["training"]
    assert training["kd_alpha"] == 1.0 and training["kd_temperature"] == 2.0
    kd_loss = training["history"][0]["train_loss"]
    labels_loss = load_checkpoint(qat["int8"]["path"]).spec.quantization["training"]["history"][0]["train_loss"]
    assert 0 <= kd_loss < 0.25 * labels_loss, (kd_loss, labels_loss)
    assert "self-distillation alpha 1 T 2" in format_comparison(result)


def test_an_int8_checkpoint_exports_as_it_is_and_verifies_against_itself(qat, mini_data, tmp_path):
    import onnx

    from edgekit.export.core import ExportConfig, export
    from edgekit.runtimes.base import load_runtime

    result = export(ExportConfig(checkpoint=qat["int8"]["path"], formats=("onnx", "openvino"), data=str(mini_data),
                                 verify_images=100, out=str(tmp_path)))
    assert sorted(a.path.name for a in result.artifacts) == ["model_int8.onnx", "model_int8.xml"]
    assert result.verify_ok, result.failed
    assert result.verify_rows[0].name.startswith("PyTorch INT8")
    ops = {node.op_type for node in onnx.load(str(tmp_path / "model_int8.onnx")).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= ops
    runtime = load_runtime(tmp_path / "model_int8.onnx")
    try:
        assert runtime.spec.precision == "int8"
        assert runtime.spec.quantization["training"]["method"] == "qat"
    finally:
        runtime.close()


def test_qat_needs_labelled_data_and_sane_numbers():
    from edgekit.training.quantize import QuantizeConfig

    with pytest.raises(BadInputError, match="--data"):
        QuantizeConfig(checkpoint="x.pt", calib="photos", mode="qat")
    with pytest.raises(BadInputError, match="--qat-epochs"):
        QuantizeConfig(checkpoint="x.pt", data="d", mode="qat", qat_epochs=0)
    with pytest.raises(BadInputError, match="--qat-lr"):
        QuantizeConfig(checkpoint="x.pt", data="d", mode="qat", qat_lr=-1.0)
