"""`edgekit quantize`: PyTorch post-training INT8 (static, calibrated; or dynamic) of a checkpoint.

Why ``torch.ao.quantization`` FX graph mode: in torch 2.14 it is the path that quantizes a stock
torchvision MobileNet (residual adds, ReLU6, hardswish, SE blocks) without hand-edited model code, fuses
Conv-BN-ReLU, runs INT8 kernels in eager mode (about 2x faster than FP32 on x86, see DESIGN.md section 6)
and exports to QDQ ONNX. Its successor, PT2E in ``torchao``, is only fast under ``torch.compile`` and is
not installed here. torch marks ``torch.ao.quantization`` deprecated and emits a warning per observer
(~1,800 for MobileNetV2); :func:`quiet_torch_ao` silences exactly those messages, nothing else.

An INT8 checkpoint stores the quantized state dict plus the recipe (engine, mode) in its spec; loading
rebuilds the float module, replays prepare/convert to get the quantized structure, then loads the weights.
"""
from __future__ import annotations

import contextlib
import copy
import logging
import os
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.errors import BadInputError
from edgekit.training.calibration import MIN_RECOMMENDED_SAMPLES, CalibrationAudit, calibration_batches
from edgekit.training.checkpoint import Checkpoint, load_checkpoint, save_checkpoint

log = logging.getLogger(__name__)

_TORCH_AO_NOISE = (
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (UserWarning, r"Please use quant_min and quant_max"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel"),
    (UserWarning, r"must run observer before calling calculate_qparams"),
    (UserWarning, r"TypedStorage is deprecated"),
)


@contextlib.contextmanager
def quiet_torch_ao():
    """Hide torch.ao's per-call deprecation notices (see module docstring); other warnings still show."""
    with warnings.catch_warnings():
        for category, message in _TORCH_AO_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


@dataclass(frozen=True)
class QuantizeConfig:
    checkpoint: str
    data: str
    mode: str = "static"  # "static" (weights + activations) or "dynamic" (Linear weights)
    engine: str = "auto"
    calib_batches: int = 32
    reduce_range: bool = False  # 7-bit activations (see qconfig_mapping)
    batch_size: int = 32
    out: str | None = None
    limit_test: int = 0
    seed: int = 0
    threads: int = 0

    def __post_init__(self) -> None:
        if self.mode not in ("static", "dynamic"):
            raise BadInputError(f"mode must be static or dynamic, got {self.mode!r}")
        if self.calib_batches < 1 or self.batch_size < 1:
            raise BadInputError("--calib-batches and --batch must be >= 1")


def resolve_engine(engine: str) -> str:
    """x86 kernels on Intel/AMD, qnnpack on ARM (what a Raspberry Pi runs)."""
    import torch

    if engine == "auto":
        engine = "qnnpack" if platform.machine().lower() in ("aarch64", "arm64", "armv7l") else "x86"
    if engine not in torch.backends.quantized.supported_engines:
        raise BadInputError(f"quantized engine {engine!r} is not available in this torch build "
                            f"(available: {', '.join(e for e in torch.backends.quantized.supported_engines if e != 'none')})")
    return engine


def float_model(ckpt: Checkpoint):
    """The float module of a checkpoint's architecture with its head, weights not loaded."""
    from edgekit.training.models import HeadConfig, build_model

    return build_model(ckpt.model["arch"], ckpt.spec.num_outputs, HeadConfig(**ckpt.model["head"]), "none").eval()


def example_input(spec):
    import torch

    return torch.zeros(1, spec.channels, *spec.input_size)


def qconfig_mapping(engine: str, reduce_range: bool = False):
    """The engine's default recipe (per-channel symmetric INT8 weights, histogram-calibrated activations,
    fixed ranges for sigmoid-like ops), with the activation width made explicit.

    torch's x86 default uses 7-bit activations (``reduce_range``) so that AVX2 kernels without VNNI can
    never saturate their 16-bit intermediate sums. On MobileNetV2 / Fashion-MNIST that costs 0.6 pp of
    accuracy more than full 8-bit activations (-0.76 vs -0.17 pp, measured on an AVX-512 VNNI Xeon, see
    benchmarks/results), so full range is our default; on an AVX2-only CPU, compare both with
    ``--reduce-range`` (the printed FP32 vs INT8 table tells which one wins there).
    """
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import HistogramObserver, default_per_channel_weight_observer

    with quiet_torch_ao():
        return get_default_qconfig_mapping(engine).set_global(
            QConfig(activation=HistogramObserver.with_args(reduce_range=reduce_range),
                    weight=default_per_channel_weight_observer))


def clamp_relu6_ranges(prepared) -> int:
    """Give the observers around every ReLU6 the fixed range [0, 6]; returns how many were changed.

    torch's backends do not fuse Conv-BN-ReLU6; ReLU6 "shares quantization parameters with its input",
    so the convolution's *pre-activation* range (often -40..+40) would set the scale of a tensor whose
    useful values lie in [0, 6]. With the range fixed to [0, 6] the quantized convolution's own saturation
    computes ReLU6 exactly and all 256 levels go to the values that survive it. On MobileNetV2 this alone
    takes the INT8 accuracy loss from about 3 pp to well under 1 pp.
    """
    import torch
    from torch.ao.quantization.observer import FixedQParamsObserver

    modules = dict(prepared.named_modules(remove_duplicate=False))
    changed = 0
    for node in prepared.graph.nodes:
        is_relu6 = (node.op == "call_module" and isinstance(modules.get(node.target), torch.nn.ReLU6)) or \
                   (node.op == "call_function" and node.target is torch.nn.functional.relu6)
        if not is_relu6:
            continue
        neighbours = [node.args[0], *node.users]  # the observer before (shared) and after
        for obs_node in neighbours:
            observer = modules.get(obs_node.target) if obs_node.op == "call_module" else None
            if observer is None or not hasattr(observer, "quant_min") or isinstance(observer, FixedQParamsObserver):
                continue
            qmin, qmax = observer.quant_min, observer.quant_max
            fixed = FixedQParamsObserver(scale=6.0 / (qmax - qmin), zero_point=qmin, dtype=observer.dtype,
                                         quant_min=qmin, quant_max=qmax)
            # The same observer can sit under several names (shared qparams): replace every alias.
            for name, module in list(modules.items()):
                if module is observer:
                    prepared.set_submodule(name, fixed)
                    modules[name] = fixed
            changed += 1
    return changed


def prepare_static(model, spec, engine: str, reduce_range: bool = False):
    """Fuse Conv-BN(-ReLU), insert observers (FX graph mode) and pin ReLU6 ranges to [0, 6]."""
    import torch
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = engine
    with quiet_torch_ao():
        prepared = prepare_fx(copy.deepcopy(model).eval(), qconfig_mapping(engine, reduce_range),
                              (example_input(spec),))
    clamp_relu6_ranges(prepared)
    return prepared


def convert_static(prepared):
    from torch.ao.quantization.quantize_fx import convert_fx

    with quiet_torch_ao():
        return convert_fx(prepared)


def quantize_dynamic(model):
    import torch
    from torch.ao.quantization import quantize_dynamic as ao_dynamic

    with quiet_torch_ao():
        return ao_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear}, dtype=torch.qint8)


def load_model(ckpt: Checkpoint):
    """A ready-to-run module for any edgekit checkpoint, FP32 or INT8."""
    import torch

    model = float_model(ckpt)
    recipe = ckpt.spec.quantization
    if recipe.get("scheme") == "pytorch-fx-static":
        # Replay the structure: observers that never saw data give placeholder qparams, which the
        # state dict below overwrites with the calibrated ones.
        model = convert_static(prepare_static(model, ckpt.spec, recipe["engine"], recipe.get("reduce_range", False)))
    elif recipe.get("scheme") == "pytorch-dynamic":
        torch.backends.quantized.engine = recipe["engine"]
        model = quantize_dynamic(model)
    with quiet_torch_ao():
        try:
            model.load_state_dict(ckpt.state_dict)
        except RuntimeError as exc:
            raise BadInputError(f"checkpoint weights do not fit its architecture {ckpt.model['arch']}: "
                                f"{str(exc).splitlines()[0]}") from exc
    return model.eval()


def run_model(model, batches) -> np.ndarray:
    import torch

    with torch.inference_mode(), quiet_torch_ao():
        return np.concatenate([model(torch.from_numpy(np.asarray(b))).numpy() for b in batches])


def latency_ms(model, spec, min_runs: int = 30, min_seconds: float = 1.0) -> float:
    """Median batch-1 latency after warm-up; a quick side-by-side figure, not the benchmark harness."""
    import torch

    x = example_input(spec)
    times = []
    with torch.inference_mode(), quiet_torch_ao():
        for _ in range(5):
            model(x)
        start = time.perf_counter()
        while len(times) < min_runs or time.perf_counter() - start < min_seconds:
            t0 = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - t0)
    return float(np.median(times) * 1e3)


def _test_batches(table, spec, indices: np.ndarray, batch_size: int):
    for start in range(0, len(indices), batch_size):
        part = indices[start:start + batch_size]
        yield table.inputs(part, spec)


def checkpoint_data(ckpt: Checkpoint, data: str):
    """The checkpoint's own data split (same seed and fractions as training), so test means test."""
    from edgekit.training.trainer import TrainConfig, load_data

    recorded = dict(ckpt.metrics.get("config", {}))
    recorded.update(data=data, limit=0)
    table = load_data(TrainConfig(**recorded) if "model" in recorded else TrainConfig(data=data, model=ckpt.model["arch"]))
    if tuple(table.class_names) != tuple(ckpt.spec.labels):
        raise BadInputError(f"{data} has classes {list(table.class_names)} but the model was trained on "
                            f"{list(ckpt.spec.labels)}")
    return table


def _calibrate(fp32, ckpt, table, cfg: QuantizeConfig, engine: str):
    import torch
    from tqdm import tqdm

    wanted = cfg.calib_batches * cfg.batch_size
    if wanted < MIN_RECOMMENDED_SAMPLES:
        log.warning("calibrating on %d images; %d or more give steadier INT8 ranges", wanted, MIN_RECOMMENDED_SAMPLES)
    prepared = prepare_static(fp32, ckpt.spec, engine, cfg.reduce_range)
    audit = CalibrationAudit()
    batches = calibration_batches(table, ckpt.spec, wanted, cfg.batch_size, seed=cfg.seed, audit=audit)
    with torch.inference_mode(), quiet_torch_ao():
        for batch in tqdm(batches, total=-(-wanted // cfg.batch_size), desc="calibrating", unit="batch",
                          leave=False, disable=None):
            prepared(torch.from_numpy(batch))
    missing = [name for name, count in audit.class_counts.items() if count == 0]
    if missing:
        log.warning("calibration saw no images of: %s", ", ".join(missing))
    return convert_static(prepared), audit


def quantize_checkpoint(cfg: QuantizeConfig) -> dict:
    """Quantize, save, reload-check, and compare FP32 vs INT8 on the test split."""
    import torch

    from edgekit.spec import sha256_file
    from edgekit.training.metrics import predictions

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = load_checkpoint(cfg.checkpoint)
    if ckpt.spec.precision != "fp32":
        raise BadInputError(f"{cfg.checkpoint} is already {ckpt.spec.precision}; quantize the FP32 checkpoint")
    table = checkpoint_data(ckpt, cfg.data)
    fp32 = load_model(ckpt)
    engine = resolve_engine(cfg.engine)
    torch.backends.quantized.engine = engine
    if cfg.mode == "static":
        int8, audit = _calibrate(fp32, ckpt, table, cfg, engine)
        recipe = {"scheme": "pytorch-fx-static", "engine": engine, "reduce_range": cfg.reduce_range,
                  "calibration": audit.to_dict()}
    else:
        int8, recipe = quantize_dynamic(fp32), {"scheme": "pytorch-dynamic", "engine": engine}
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint).with_name(Path(cfg.checkpoint).stem + "_int8.pt")
    spec = ckpt.spec.replace(precision="int8", quantization=recipe,
                             source_checkpoint_sha256=sha256_file(cfg.checkpoint))
    save_checkpoint(out, Checkpoint(spec, ckpt.model, int8.state_dict(), ckpt.history, {}))

    test = table.indices("test")[: cfg.limit_test or None]
    batches = list(_test_batches(table, spec, test, cfg.batch_size))
    reloaded = load_model(load_checkpoint(out))
    if not np.array_equal(run_model(reloaded, batches[:1]), run_model(int8, batches[:1])):
        os.unlink(out)
        raise BadInputError("the saved INT8 checkpoint does not reproduce the quantized model; nothing written")
    labels = table.labels[test]
    logits = {"fp32": run_model(fp32, batches), "int8": run_model(reloaded, batches)}
    preds = {k: predictions(v, spec.binary) for k, v in logits.items()}
    result = {"mode": cfg.mode, "engine": engine, "test_images": int(len(test)), "calibration": recipe.get("calibration"),
              "top1_agreement": float((preds["fp32"] == preds["int8"]).mean())}
    for name, model, path in (("fp32", fp32, Path(cfg.checkpoint)), ("int8", reloaded, out)):
        result[name] = {"path": str(path), "accuracy": float((preds[name] == labels).mean()),
                        "size_mb": path.stat().st_size / 1e6, "latency_ms": latency_ms(model, spec),
                        "threads": torch.get_num_threads()}
    result["accuracy_delta_pp"] = 100 * (result["int8"]["accuracy"] - result["fp32"]["accuracy"])
    result["size_ratio"] = result["int8"]["size_mb"] / result["fp32"]["size_mb"]
    result["speedup"] = result["fp32"]["latency_ms"] / result["int8"]["latency_ms"]
    return result


def format_comparison(result: dict) -> str:
    rows = [f"{'':<6}{'accuracy':>10}{'size MB':>10}{'latency ms (bs1)':>18}"]
    for name in ("fp32", "int8"):
        r = result[name]
        rows.append(f"{name.upper():<6}{r['accuracy']:>10.4f}{r['size_mb']:>10.2f}{r['latency_ms']:>18.2f}")
    rows.append(f"INT8 vs FP32: accuracy {result['accuracy_delta_pp']:+.2f} pp, size x{result['size_ratio']:.2f}, "
                f"speed x{result['speedup']:.2f}, top-1 agreement {result['top1_agreement']:.4f} "
                f"({result['test_images']} test images, {result['mode']}, engine {result['engine']}, "
                f"{result['fp32']['threads']} threads)")
    if result.get("calibration"):
        cal = result["calibration"]
        rows.append(f"calibration: {cal['samples']} train images, {sum(1 for c in cal['class_counts'].values() if c)}"
                    f"/{len(cal['class_counts'])} classes, sha256 {cal['sha256'][:16]}")
    return "\n".join(rows)
