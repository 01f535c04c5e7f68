"""Training, checkpoints and PyTorch INT8 on a tiny model with real torch (32x32 inputs)."""
import json

import numpy as np
import pytest
import torch

from edgekit.core.errors import BadInputError
from edgekit.models.checkpoint import load_checkpoint
from edgekit.models.loading import load_model, quantize_dynamic, run_model


def test_training_writes_checkpoint_metrics_and_curves(trained):
    out = trained["checkpoint"].parent
    assert {"model.pt", "metrics.json", "curves.png"} <= {p.name for p in out.iterdir()}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["samples"] == 1000  # the embedded subset's own test split
    assert np.array(metrics["confusion_matrix"]).sum() == 1000
    assert 0.0 <= metrics["accuracy"] <= 1.0 and "per_class" in metrics
    assert (out / "curves.png").read_bytes()[:4] == b"\x89PNG"


def test_spec_round_trips_through_the_checkpoint(trained):
    ckpt = load_checkpoint(trained["checkpoint"])
    spec = ckpt.spec
    assert spec.arch == "mobilenet_v2" and spec.input_size == (32, 32) and spec.precision == "fp32"
    assert spec.labels[0] == "T-shirt/top" and spec.num_outputs == 10
    assert "torch" in spec.versions
    model = load_model(ckpt)
    x = torch.zeros(2, spec.channels, *spec.input_size)
    assert model(x).shape == (2, 10)


def test_reloaded_fp32_model_reproduces_training_logits(trained, mini_data):
    """The checkpoint alone (spec + weights) gives back the test accuracy training reported."""
    from edgekit.core.spec import preprocess
    from edgekit.core.data import load_table

    ckpt = load_checkpoint(trained["checkpoint"])
    table = load_table(mini_data)
    test = table.indices("test")
    batch = np.stack([preprocess(table.image(i), ckpt.spec, table.color) for i in test])
    accuracy = (run_model(load_model(ckpt), [batch]).argmax(1) == table.labels[test]).mean()
    assert accuracy == pytest.approx(trained["report"]["accuracy"])


def test_checkpoint_load_errors_are_clean(tmp_path, trained):
    truncated = tmp_path / "t.pt"
    truncated.write_bytes(trained["checkpoint"].read_bytes()[:-100])
    with pytest.raises(BadInputError, match="t.pt"):
        load_checkpoint(truncated)


def test_static_int8_fuses_and_uses_quantized_kernels(quantized):
    import torch.ao.nn.quantized as nnq

    ckpt = load_checkpoint(quantized["int8"]["path"])
    assert ckpt.spec.precision == "int8"
    assert ckpt.spec.quantization["scheme"] == "pytorch-fx-static"
    assert ckpt.spec.quantization["calibration"]["samples"] == 64
    model = load_model(ckpt)
    kinds = {type(m) for m in model.modules()}
    assert nnq.Conv2d in kinds
    classifier = model.get_submodule("classifier.1")  # INT8 weights, float logits (no ties between classes)
    assert classifier.weight_int8.dtype == torch.int8 and classifier.weight_int8.shape == (10, 1280)
    assert ckpt.spec.quantization["float_logits"] is True
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # folded into the convs
    assert "quantize_per_tensor" in model.code  # the input is quantized once; the logits come out float
    assert model(torch.zeros(1, 3, 32, 32)).dtype == torch.float32
    first_conv = next(m for m in model.modules() if isinstance(m, nnq.Conv2d))
    assert first_conv.weight().dtype == torch.qint8


def test_relu6_outputs_keep_a_calibrated_range_inside_zero_to_six(quantized):
    model = load_model(load_checkpoint(quantized["int8"]["path"]))
    first_conv = model.get_submodule("features.0.0")  # Conv-BN of the stem, followed by ReLU6
    assert first_conv.zero_point == 0
    assert 0 < first_conv.scale * 255 <= 6.0 + 1e-6


@pytest.mark.parametrize("gain, low, high", [(100.0, 5.9, 6.0 + 1e-6), (0.05, 0.0, 1.0)])
def test_conv_relu6_range_follows_the_data_clipped_to_six(gain, low, high):
    """Conv -> ReLU6 gets the range its calibration data reach, never beyond 6: a fixed [0, 6] scale would
    leave a layer whose outputs stay under 1 about 40 of the 256 levels."""
    from edgekit.core.spec import ModelSpec
    from edgekit.models.loading import convert_static, prepare_static

    torch.manual_seed(0)
    block = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.ReLU6()).eval()
    spec = ModelSpec(arch="custom", input_size=(16, 16), labels=("a", "b"))
    x = torch.randn(8, 3, 16, 16) * gain
    before = torch.backends.quantized.engine
    try:
        prepared = prepare_static(block, spec, "x86")
        with torch.inference_mode():
            prepared(x)
            converted = convert_static(prepared)
            out = converted(x)
    finally:
        torch.backends.quantized.engine = before
    conv = converted.get_submodule("0")
    assert conv.zero_point == 0 and low < conv.scale * 255 <= high
    assert 0.0 <= float(out.min()) and float(out.max()) <= 6.0  # ReLU6 computed by the saturation


def test_int8_checkpoint_is_small_close_and_reloads_identically(quantized):
    assert quantized["size_ratio"] < 0.35
    assert quantized["top1_agreement"] > 0.5
    assert quantized["int8"]["latency_ms"] > 0
    ckpt = load_checkpoint(quantized["int8"]["path"])
    x = np.random.default_rng(0).normal(size=(4, 3, 32, 32)).astype(np.float32)
    np.testing.assert_array_equal(run_model(load_model(ckpt), [x]), run_model(load_model(ckpt), [x]))


def test_qnnpack_int8_conv_relu6_blocks_match_fp32_as_closely_as_x86(trained, mini_data, tmp_path):
    """qnnpack (the Raspberry Pi's engine) once scrambled every Conv -> ReLU6 output (torch's qnnpack clamp
    writes a channels-last input into a default-layout output); edgekit routes ReLU6 around it. Checked on the
    first two blocks of MobileNetV2 (a 1-epoch model's logits hardly depend on its input, so the end of the
    network would not show it), then through quantize -> save -> load."""
    from edgekit.core.data import load_table
    from edgekit.core.spec import preprocess
    from edgekit.models.loading import convert_static, prepare_static
    from edgekit.training.quantize import QuantizeConfig, quantize_checkpoint

    before = torch.backends.quantized.engine
    table = load_table(mini_data)
    ckpt = load_checkpoint(trained["checkpoint"])
    batch = torch.from_numpy(np.stack([preprocess(table.image(i), ckpt.spec, table.color)
                                       for i in table.indices("test")[:64]]))
    blocks = torch.nn.Sequential(*list(load_model(ckpt).features)[:2]).eval()
    errors = {}
    try:
        with torch.inference_mode():
            reference = blocks(batch)
            for engine in ("x86", "qnnpack"):
                prepared = prepare_static(blocks, ckpt.spec, engine)
                prepared(batch)
                out = convert_static(prepared)(batch)
                errors[engine] = float((out - reference).abs().mean() / reference.abs().mean())
        result = quantize_checkpoint(QuantizeConfig(checkpoint=str(trained["checkpoint"]), data=str(mini_data),
                                                    engine="qnnpack", calib_batches=2, batch_size=16,
                                                    limit_test=16, out=str(tmp_path / "qnnpack.pt")))
        reloaded = load_checkpoint(result["int8"]["path"])
        assert reloaded.spec.quantization["engine"] == "qnnpack"
        assert "relu6_any_layout" in load_model(reloaded).code
    finally:
        torch.backends.quantized.engine = before
    assert errors["qnnpack"] < 0.1, errors
    assert errors["qnnpack"] < 2 * errors["x86"] + 0.02, errors


def test_dynamic_quantization_swaps_linear_layers(trained):
    import torch.ao.nn.quantized.dynamic as nnqd

    fp32 = load_model(load_checkpoint(trained["checkpoint"]))
    dynamic = quantize_dynamic(fp32)
    assert isinstance(dynamic.classifier[-1], nnqd.Linear)
    x = torch.randn(3, 3, 32, 32)
    with torch.inference_mode():
        np.testing.assert_allclose(dynamic(x).numpy(), fp32(x).numpy(), atol=0.5)


def test_cosine_schedule_decays_the_rate_each_epoch_and_unknown_schedules_are_refused(mini_data, tmp_path):
    from edgekit.training.trainer import TrainConfig, train

    with pytest.raises(BadInputError, match="schedule"):
        TrainConfig(data=str(mini_data), schedule="linear")
    result = train(TrainConfig(data=str(mini_data), weights="none", epochs=3, batch_size=32, limit=96, lr=1e-3,
                               schedule="cosine", patience=10, out=str(tmp_path), threads=2))
    rates = [h["lr"] for h in result["history"]]  # the rate for the next epoch, read after each step
    assert rates == pytest.approx([7.5e-4, 2.5e-4, 0.0], abs=1e-9)


def test_head_only_stage_keeps_the_pretrained_batchnorm_statistics(image_folder, tmp_path):
    """Stage 1 trains only the head: the frozen backbone's BatchNorm running statistics must come out exactly
    as they went in (a 60-image data set would otherwise overwrite them)."""
    import torchvision

    from edgekit.training.trainer import TrainConfig, train

    pretrained = torchvision.models.mobilenet_v2()
    for module in pretrained.modules():  # statistics no 60-image batch would reproduce
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.normal_(0, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    weights = tmp_path / "pretrained.pth"
    torch.save(pretrained.state_dict(), weights)
    result = train(TrainConfig(data=str(image_folder), weights=str(weights), epochs=1, head_epochs=1, batch_size=16,
                               out=str(tmp_path / "out"), threads=2))
    trained = load_checkpoint(result["checkpoint"]).state_dict
    stats = [k for k in trained if k.startswith("features.") and k.endswith(("running_mean", "running_var"))]
    assert len(stats) == 104
    for key in stats:
        torch.testing.assert_close(trained[key], pretrained.state_dict()[key], rtol=0, atol=0, msg=key)
    # --train-bn: the statistics follow the new data instead
    adapted = train(TrainConfig(data=str(image_folder), weights=str(weights), epochs=1, head_epochs=1, batch_size=16,
                                train_bn=True, out=str(tmp_path / "adapted"), threads=2))
    moved = load_checkpoint(adapted["checkpoint"]).state_dict
    assert all(not torch.equal(moved[k], pretrained.state_dict()[k]) for k in stats if k.endswith("running_mean"))


def test_checkpoint_follows_the_umask(trained, tmp_path):
    import os
    import stat

    from edgekit.models.checkpoint import save_checkpoint

    ckpt = load_checkpoint(trained["checkpoint"])
    old = os.umask(0o022)
    try:
        path = save_checkpoint(tmp_path / "model.pt", ckpt)
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_a_model_that_predicts_one_class_gets_a_warning():
    from edgekit.core.spec import ModelSpec
    from edgekit.training.trainer import collapse_warnings

    spec = ModelSpec(arch="mobilenet_v2", labels=("cat", "dog", "owl"), input_size=(32, 32))
    one_class = np.tile([0.1, 2.0, 0.3], (50, 1))
    assert "predicts 'dog' for every one of the 50 test images" in collapse_warnings(one_class, spec)[0]
    assert collapse_warnings(np.eye(3)[[0, 1, 2, 1]], spec) == []


@pytest.mark.slow
def test_the_positive_class_is_chosen_recorded_and_reported(binary_models, tmp_path):
    """`attentive` sorts first, yet it is the positive class: put second, recorded, and every binary metric
    (and the evaluation commands' relabelled data) is about it; --positive picks the other one."""
    import json

    from conftest import run_cli
    from edgekit.models.checkpoint import load_checkpoint
    from edgekit.models.loading import checkpoint_data

    ckpt = load_checkpoint(binary_models["pytorch"])
    assert ckpt.spec.labels == ("not_attentive", "attentive") and ckpt.spec.positive == "attentive"
    report = ckpt.metrics
    assert report["positive"] == "attentive"
    assert report["recall"] == pytest.approx(report["per_class"]["attentive"]["recall"])
    data = ckpt.metrics["config"]["data"]
    table = checkpoint_data(ckpt, data)  # rebuilt for evaluation: numbered in the model's order
    assert table.class_names == ckpt.spec.labels
    assert all(table.labels[i] == 1 for i, p in enumerate(table.paths) if p.parent.name == "attentive")

    out = tmp_path / "neg"
    proc = run_cli("train", "--data", data, "--weights", "none", "--epochs", "1", "--batch", "16", "--out", str(out),
                   "--positive", "not_attentive", "--threads", "1")
    assert proc.returncode == 0, proc.stderr
    assert "positive class: not_attentive" in proc.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["positive"] == "not_attentive"
    assert metrics["recall"] == pytest.approx(metrics["per_class"]["not_attentive"]["recall"])
    refused = run_cli("train", "--data", data, "--weights", "none", "--epochs", "1", "--out", str(tmp_path / "x"),
                      "--positive", "sleepy")
    assert refused.returncode == 2 and "--positive 'sleepy' is not one of" in refused.stderr


def test_data_with_other_classes_is_refused_in_one_short_line():
    from edgekit.core.data import ImageTable

    table = ImageTable(labels=np.arange(1000) % 1000, class_names=tuple(f"n{i:04d}" for i in range(1000)), color="BGR")
    with pytest.raises(BadInputError) as refused:
        table.relabel(tuple(f"m{i:04d}" for i in range(1000)), "photos/")
    assert len(str(refused.value)) < 300 and "and 995 more" in str(refused.value)


def test_activation_ranges_are_the_mean_of_each_images_min_and_max():
    """One outlier image does not set the scale every image is quantized with (edgekit's activation recipe)."""
    from edgekit.models.loading import qconfig_mapping

    observer = qconfig_mapping("x86").global_qconfig.activation()
    observer(torch.tensor([[0.0, 1.0], [-1.0, 3.0]]))  # two images: maxima 1 and 3, minima 0 and -1
    observer(torch.tensor([[0.0, 20.0]]))  # an outlier image
    assert float(observer.max_val) == pytest.approx((1 + 3 + 20) / 3)
    assert float(observer.min_val) == pytest.approx(-1 / 3)
    scale, zero_point = observer.calculate_qparams()
    assert float(scale) == pytest.approx((8 + 1 / 3) / 255, rel=1e-5) and int(zero_point) in (10, 11)


def test_training_from_scratch_lets_batchnorm_statistics_follow_the_weights():
    """torchvision builds MobileNetV3 with BatchNorm momentum 0.01; from scratch the trainer uses 0.1."""
    import torch

    from edgekit.models.registry import HeadConfig, build_model
    from edgekit.training.trainer import SCRATCH_BN_MOMENTUM, from_scratch_batchnorm

    v3 = build_model("mobilenet_v3_small", 10, HeadConfig(0.2, 0), "none")
    norms = [m for m in v3.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.01 for m in norms)
    assert from_scratch_batchnorm(v3) == len(norms)
    assert all(m.momentum == SCRATCH_BN_MOMENTUM for m in norms)
    assert from_scratch_batchnorm(build_model("mobilenet_v2", 10, HeadConfig(0.2, 0), "none")) == 0  # already 0.1


def test_train_in_two_processes_shares_the_split_and_writes_once(mini_data, tmp_path):
    """--nproc 2: DistributedDataParallel on gloo; each process takes half the train split and half the batch,
    only rank 0 writes, the checkpoint is an ordinary one."""
    from tests.conftest import run_cli

    proc = run_cli("train", "--data", str(mini_data), "--model", "small_cnn", "--imgsz", "28", "--epochs", "2",
                   "--batch", "32", "--limit", "200", "--nproc", "2", "--threads", "1", "--out", str(tmp_path / "ddp"))
    assert proc.returncode == 0, proc.stderr
    assert "training in 2 processes" in proc.stderr and proc.stderr.count("epoch 2 (all)") == 1  # rank 0 speaks
    metrics = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert metrics["distributed"]["world_size"] == 2 and metrics["distributed"]["batch_per_process"] == 16
    assert metrics["distributed"]["train_images_per_process"] == 100  # --limit 200 keeps 200 train images
    assert [h["epoch"] for h in load_checkpoint(tmp_path / "ddp" / "model.pt").history] == [1, 2]
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == ["curves.png", "metrics.json", "model.pt"]
    model = load_model(load_checkpoint(tmp_path / "ddp" / "model.pt"))
    assert np.isfinite(run_model(model, [np.zeros((1, 1, 28, 28), np.float32)])).all()
    proc = run_cli("train", "--data", str(mini_data), "--nproc", "0", "--out", str(tmp_path / "bad"))
    assert proc.returncode == 2 and "--nproc must be in [1, 64]" in proc.stderr


def test_two_process_training_rewraps_when_the_stage_changes_what_trains(image_folder, tmp_path):
    """Pretrained weights: head-only stage, then the backbone too. DDP only synchronises the parameters that
    trained when it was built, so each stage gets its own wrapper."""
    import torchvision

    from edgekit.training.trainer import TrainConfig, train

    weights = tmp_path / "pretrained.pth"
    torch.save(torchvision.models.mobilenet_v2().state_dict(), weights)
    result = train(TrainConfig(data=str(image_folder), weights=str(weights), epochs=2, head_epochs=1, batch_size=16,
                               nproc=2, threads=1, out=str(tmp_path / "out")))
    assert [h["stage"] for h in result["history"]] == ["head", "finetune"]
    assert result["report"]["distributed"]["world_size"] == 2


def test_the_documented_torchrun_form_trains_across_processes(mini_data, tmp_path):
    """`torchrun ... -m edgekit train ARGS` (one node here, two processes): the same code path as several
    machines, each process told its rank by torchrun's environment; the output is written once."""
    import subprocess
    import sys

    from tests.conftest import free_port

    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc-per-node", "2",
                           "--rdzv-backend", "c10d", "--rdzv-endpoint", f"127.0.0.1:{free_port()}", "-m", "edgekit",
                           "train", "--data", str(mini_data), "--model", "small_cnn", "--imgsz", "28", "--epochs", "1",
                           "--limit", "200", "--threads", "1", "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("checkpoint:") == 1  # rank 1 prints nothing
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["distributed"]["world_size"] == 2 and metrics["distributed"]["train_images_per_process"] == 100
