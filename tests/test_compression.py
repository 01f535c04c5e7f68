"""Compression beyond PTQ on the tiny model: channel and unstructured pruning (edgekit prune)."""
from __future__ import annotations

import json

import numpy as np
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
