"""`edgekit quantize`: PyTorch post-training INT8 (static, calibrated; or dynamic) of a checkpoint.

Why ``torch.ao.quantization`` FX graph mode: in torch 2.14 it is the path that quantizes a stock
torchvision MobileNet (residual adds, ReLU6, hardswish, SE blocks) without hand-edited model code, fuses
Conv-BN-ReLU, runs INT8 kernels in eager mode (about 2x faster than FP32 on x86, see docs/architecture.md)
and exports to QDQ ONNX. Its successor, PT2E in ``torchao``, is only fast under ``torch.compile`` and is
not installed here. The quantized structure (qconfig, ReLU6 ranges, prepare/convert) is part of the
checkpoint format and lives in edgekit.models.loading; this module calibrates, saves and compares.
"""
from __future__ import annotations

import logging
import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.core import checks
from edgekit.core.calibration import MIN_RECOMMENDED_SAMPLES, CalibrationAudit, calibration_batches
from edgekit.core.errors import BadInputError
from edgekit.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from edgekit.models.loading import (checkpoint_data, convert_static, example_input, load_model, prepare_static,
                                    quantize_dynamic, quiet_torch_ao, run_model)

log = logging.getLogger(__name__)

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
        checks.within("--calib-batches", self.calib_batches, 1, 100_000)
        checks.within("--batch", self.batch_size, 1, 4096)
        checks.at_least("--limit-test", self.limit_test, 0)
        checks.threads("--threads", self.threads)


def resolve_engine(engine: str) -> str:
    """x86 kernels on Intel/AMD, qnnpack on ARM (what a Raspberry Pi runs)."""
    import torch

    if engine == "auto":
        engine = "qnnpack" if platform.machine().lower() in ("aarch64", "arm64", "armv7l") else "x86"
    if engine not in torch.backends.quantized.supported_engines:
        raise BadInputError(f"quantized engine {engine!r} is not available in this torch build "
                            f"(available: {', '.join(e for e in torch.backends.quantized.supported_engines if e != 'none')})")
    return engine


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

    from edgekit.core.spec import sha256_file
    from edgekit.core.metrics import predictions

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
