"""Every config object refuses nonsense when it is built, from Python as from the CLI: one table of cases."""
import pytest

from edgekit.benchmarks.harness import BenchConfig
from edgekit.core.checks import max_threads
from edgekit.core.errors import BadInputError
from edgekit.edge_apps.dataset import FaceDatasetConfig
from edgekit.edge_apps.join import JoinConfig
from edgekit.edge_apps.meeting_server import ServerConfig
from edgekit.edge_apps.pipeline import PipelineConfig
from edgekit.export.core import ExportConfig
from edgekit.runtimes import RuntimeOptions
from edgekit.training.quantize import QuantizeConfig
from edgekit.training.trainer import TrainConfig

TOO_MANY = max_threads() + 1
CASES = [
    (TrainConfig, {"data": "d", "threads": TOO_MANY}, "--threads must be in [0, "),
    (TrainConfig, {"data": "d", "threads": -1}, "--threads"),
    (TrainConfig, {"data": "d", "epochs": 0}, "--epochs"),
    (TrainConfig, {"data": "d", "lr": 0.0}, "--lr must be in (0, 10]"),
    (TrainConfig, {"data": "d", "lr": float("nan")}, "--lr"),
    (TrainConfig, {"data": "d", "val_fraction": 1.5}, "--val-fraction"),
    (TrainConfig, {"data": "d", "input_size": 30000}, "--imgsz must be in [16, 4096]"),
    (TrainConfig, {"data": "d", "dropout": 1.0}, "--dropout"),
    (TrainConfig, {"data": "d", "schedule": "linear"}, "--schedule must be one of plateau, cosine"),
    (QuantizeConfig, {"checkpoint": "c", "data": "d", "threads": -1}, "--threads"),
    (QuantizeConfig, {"checkpoint": "c", "data": "d", "limit_test": -5}, "--limit-test"),
    (ExportConfig, {"checkpoint": "c", "verify_images": -5}, "--verify-images must be >= 0"),
    (ExportConfig, {"checkpoint": "c", "calib_size": 0}, "--calib-size"),
    (ExportConfig, {"checkpoint": "c", "input_color": "CMYK"}, "--input-color"),
    (RuntimeOptions, {"threads": 10_000}, "--threads"),
    (RuntimeOptions, {"batch": 0}, "--batch"),
    (BenchConfig, {"models": ("m.onnx",), "threads": (0,)}, "--threads must be in [1, "),
    (BenchConfig, {"models": ("m.onnx",), "threads": (TOO_MANY,)}, "--threads"),
    (BenchConfig, {"models": ("m.onnx",), "timeout": 0}, "--timeout"),
    (PipelineConfig, {"every": 0}, "--every"),
    (PipelineConfig, {"scale": 0}, "--scale must be in (0, 4]"),
    (PipelineConfig, {"motion_gate": -1}, "--motion-gate"),
    (JoinConfig, {"fps": 0}, "--fps"),
    (JoinConfig, {"duration": -1}, "--duration"),
    (ServerConfig, {"port": 70000}, "--port must be a port number in [0, 65535], got 70000"),
    (ServerConfig, {"max_clients": 0}, "--max-clients"),
    (ServerConfig, {"timeout": float("nan")}, "--timeout"),
    (ServerConfig, {"tls_cert": "c.pem"}, "TLS needs both"),
    (FaceDatasetConfig, {"videos": "v", "labels": "l", "out": "o", "fps": 0}, "--fps"),
    (FaceDatasetConfig, {"videos": "v", "labels": "l", "out": "o", "size": 1}, "--size"),
]


@pytest.mark.parametrize("cls, fields, fragment", CASES, ids=[f"{c.__name__}-{'-'.join(f)}" for c, f, _ in CASES])
def test_nonsense_is_refused_when_the_config_is_built(cls, fields, fragment):
    with pytest.raises(BadInputError) as refused:
        cls(**fields)
    assert fragment in str(refused.value)


@pytest.mark.parametrize("cls, fields", [(TrainConfig, {"data": "d"}), (QuantizeConfig, {"checkpoint": "c", "data": "d"}),
                                         (ExportConfig, {"checkpoint": "c"}), (RuntimeOptions, {}),
                                         (BenchConfig, {"models": ("m.onnx",), "threads": (1,)}), (PipelineConfig, {}),
                                         (JoinConfig, {}), (ServerConfig, {}),
                                         (FaceDatasetConfig, {"videos": "v", "labels": "l", "out": "o"})])
def test_defaults_are_valid_and_configs_are_frozen(cls, fields):
    import dataclasses

    config = cls(**fields)
    name = dataclasses.fields(config)[0].name
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(config, name, getattr(config, name))
