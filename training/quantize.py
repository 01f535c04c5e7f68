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
from edgekit.core.calibration import MIN_RECOMMENDED_SAMPLES, CalibrationAudit, calibration_batches, calibration_table
from edgekit.core.errors import BadInputError
from edgekit.models.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from edgekit.models.loading import (checkpoint_data, convert_static, example_input, keep_float_modules, load_model,
                                    prepare_static, quantize_dynamic, quiet_torch_ao, run_model)

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class QuantizeConfig:
    checkpoint: str
    data: str | None = None  # labelled (or unlabelled) evaluation data; its train split calibrates unless calib
    calib: str | None = None  # unlabelled calibration images (folder, video, CSV)
    mode: str = "static"  # "static" (weights + activations), "dynamic" (Linear weights) or "qat" (trained)
    engine: str = "auto"
    calib_batches: int = 32
    reduce_range: bool = False  # 7-bit activations (see qconfig_mapping)
    keep_float: tuple[str, ...] = ()  # modules kept in float: first, last, module names
    batch_size: int = 32
    out: str | None = None
    limit_test: int = 0
    seed: int = 0
    threads: int = 0
    qat_epochs: int = 3  # quantization-aware training: epochs, learning rate (SGD, momentum 0.9), train images
    qat_lr: float = 1e-4
    limit_train: int = 0
    # qat: weight of the FP32 model's own soft outputs in the loss (self-distillation; 0 = labels only) and
    # the temperature they are softened with
    qat_kd_alpha: float = 0.0
    qat_kd_temperature: float = 1.0
    # qat: clip the gradient norm to this before each step; None = 1.0 for clip models, off (0) for image models.
    # QAT of the distilled 3D MobileNet (temporal benchmark) diverged within 10 steps without it, at lr 1e-4 and
    # at 1e-5 (gradient norm 8 -> 700, test accuracy 0.98 -> 0.14); with 1.0 it held. Image models keep the
    # unclipped recipe their recorded results come from.
    qat_clip_grad: float | None = None

    def __post_init__(self) -> None:
        if self.mode not in ("static", "dynamic", "qat"):
            raise BadInputError(f"mode must be static, dynamic or qat, got {self.mode!r}")
        checks.within("--qat-epochs", self.qat_epochs, 1, 1000)
        checks.within("--qat-lr", self.qat_lr, 0, 10, low_open=True)
        checks.at_least("--limit-train", self.limit_train, 0)
        checks.within("--qat-kd-alpha", self.qat_kd_alpha, 0, 1)
        checks.within("--qat-kd-temperature", self.qat_kd_temperature, 0, 100, low_open=True)
        if self.qat_clip_grad is not None:
            checks.within("--qat-clip-grad", self.qat_clip_grad, 0, 1e6)
        if self.mode == "qat" and not self.data:
            raise BadInputError("--mode qat trains on labelled data: pass --data (the data the model was trained on)")
        checks.within("--calib-batches", self.calib_batches, 1, 100_000)
        checks.within("--batch", self.batch_size, 1, 4096)
        checks.at_least("--limit-test", self.limit_test, 0)
        checks.threads("--threads", self.threads)
        if not self.data and not self.calib:
            raise BadInputError("pass --data (the training data) or --calib (unlabelled images) to calibrate on")


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


def _calibrate(fp32, ckpt, data_table, cfg: QuantizeConfig, engine: str):
    import torch
    from tqdm import tqdm

    wanted = cfg.calib_batches * cfg.batch_size
    table, source = calibration_table(cfg.calib, data_table, wanted, cfg.seed)
    if min(wanted, len(table.indices("train"))) < MIN_RECOMMENDED_SAMPLES:
        log.warning("calibrating on %d %s; %d or more give steadier INT8 ranges",
                    min(wanted, len(table.indices("train"))), ckpt.spec.samples, MIN_RECOMMENDED_SAMPLES)
    keep = keep_float_modules(fp32, cfg.keep_float)
    prepared = prepare_static(fp32, ckpt.spec, engine, cfg.reduce_range, tuple(keep))
    audit = CalibrationAudit(source=source)
    batches = calibration_batches(table, ckpt.spec, wanted, cfg.batch_size, seed=cfg.seed, audit=audit)
    with torch.inference_mode(), quiet_torch_ao():
        for batch in tqdm(batches, total=-(-wanted // cfg.batch_size), desc="calibrating", unit="batch",
                          leave=False, disable=None):
            prepared(torch.from_numpy(batch))
    missing = [name for name, count in audit.class_counts.items() if count == 0]
    if missing:
        log.warning("calibration saw no images of: %s", ", ".join(missing))
    return convert_static(prepared, float_logits=True), audit, keep


def _start_from_calibrated_ranges(model, batches) -> int:
    """Give every fake quantizer of a QAT model the ranges post-training calibration would give, before training.

    Fake quantizers track moving averages (``x += 0.01 * (batch - x)``) from the first batch they see, so QAT
    that starts cold trains on the ranges of a few augmented batches (on the 5-epoch Fashion-MNIST teacher it
    ended below PTQ: 0.941 agreement with FP32 vs 0.987). Here the observers see the calibration images one
    at a time with fake quantization off and an averaging constant of 1/k on the k-th image, i.e. the mean of
    the images' minima and maxima, which is the post-training observer's range (``MeanMinMaxObserver``);
    training then goes on from there with the usual constant. Returns how many images were seen."""
    import torch
    from torch.ao.quantization import FakeQuantizeBase, disable_fake_quant, enable_fake_quant, enable_observer

    observers = {id(fq.activation_post_process): fq.activation_post_process for fq in model.modules()
                 if isinstance(fq, FakeQuantizeBase) and hasattr(fq.activation_post_process, "averaging_constant")}
    constants = {key: obs.averaging_constant for key, obs in observers.items()}
    calls = dict.fromkeys(observers, 0)

    def count(obs, args):  # per call, not per image: a quantizer shared by two tensors (ReLU6) is called twice
        calls[id(obs)] += 1
        obs.averaging_constant = 1.0 / calls[id(obs)]

    hooks = [obs.register_forward_pre_hook(count) for obs in observers.values()]
    was_training = model.training
    model.eval().apply(disable_fake_quant)
    model.apply(enable_observer)
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                for image in torch.from_numpy(batch):
                    seen += 1
                    model(image[None])
    finally:
        for hook in hooks:
            hook.remove()
        for key, obs in observers.items():
            obs.averaging_constant = constants[key]
        model.apply(enable_fake_quant).train(was_training)
    return seen


def _qat(fp32, ckpt, table, cfg: QuantizeConfig, engine: str):
    """Quantization-aware training from the FP32 weights on the train split; returns (converted INT8, recipe).

    Recipe (torchvision's QAT recipe, shortened for fine-tuning a converged model): SGD with momentum 0.9 at a
    small learning rate, BatchNorm statistics frozen from the start (the FP32 model's are already right, and
    small batches would disturb them), activation ranges tracked as moving averages and then frozen for the
    last epoch (when there is more than one), so the weights settle on the ranges that will be used."""
    import torch
    from tqdm import tqdm

    from edgekit.models.loading import prepare_qat
    from edgekit.training.torchdata import make_loader
    from edgekit.training.trainer import run_epoch

    if not table.labelled:
        raise BadInputError("--mode qat trains on labelled data; these images have no labels")
    train_idx = table.indices("train")[: cfg.limit_train or None]
    if not len(train_idx):
        raise BadInputError("--mode qat: the data has no train split")
    keep = keep_float_modules(fp32, cfg.keep_float)
    model = prepare_qat(fp32, ckpt.spec, engine, cfg.reduce_range, tuple(keep))
    model.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)
    wanted = cfg.calib_batches * cfg.batch_size
    calib_table, source = calibration_table(cfg.calib, lambda: table, wanted, cfg.seed)
    audit = CalibrationAudit(source=source)
    with quiet_torch_ao():
        _start_from_calibrated_ranges(model, tqdm(
            calibration_batches(calib_table, ckpt.spec, wanted, cfg.batch_size, seed=cfg.seed, audit=audit),
            total=-(-wanted // cfg.batch_size), desc="initial ranges", unit="batch", leave=False, disable=None))
    loader = make_loader(table, train_idx, ckpt.spec, cfg.batch_size, train=True, seed=cfg.seed)
    loss_fn = torch.nn.BCEWithLogitsLoss() if ckpt.spec.binary else torch.nn.CrossEntropyLoss()
    distill = None
    if cfg.qat_kd_alpha > 0:  # the FP32 model teaches its INT8 self on the same augmented batches
        from edgekit.training.distill import Distiller

        distill = Distiller(fp32.eval(), ckpt.spec, ckpt.spec, cfg.qat_kd_temperature, cfg.qat_kd_alpha, loss_fn,
                            source=str(cfg.checkpoint))
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=cfg.qat_lr, momentum=0.9)
    clip_grad = cfg.qat_clip_grad if cfg.qat_clip_grad is not None else (1.0 if ckpt.spec.task == "clip" else 0.0)
    history = []
    with quiet_torch_ao():
        for epoch in range(1, cfg.qat_epochs + 1):
            if cfg.qat_epochs > 1 and epoch == cfg.qat_epochs:
                model.apply(torch.ao.quantization.disable_observer)
            start = time.perf_counter()
            loss, accuracy, _, _ = run_epoch(model, loader, loss_fn, ckpt.spec.binary, optimizer,
                                             desc=f"QAT epoch {epoch}", distill=distill, clip_grad=clip_grad)
            history.append({"epoch": epoch, "train_loss": loss, "train_acc": accuracy,
                            "seconds": time.perf_counter() - start})
            log.info("QAT epoch %d: train loss %.4f acc %.4f", epoch, loss, accuracy)
    recipe = {"scheme": "pytorch-fx-static", "engine": engine, "reduce_range": cfg.reduce_range, "keep_float": keep,
              "float_logits": True, "calibration": audit.to_dict(),
              "training": {"method": "qat", "epochs": cfg.qat_epochs, "lr": cfg.qat_lr, "images": int(len(train_idx)),
                           "kd_alpha": cfg.qat_kd_alpha, "kd_temperature": cfg.qat_kd_temperature,
                           "clip_grad": clip_grad,
                           "history": history}}
    return convert_static(model, float_logits=True), recipe


def quantize_checkpoint(cfg: QuantizeConfig) -> dict:
    """Quantize, save, reload-check, and compare FP32 vs INT8 on the test split."""
    import torch

    from edgekit.core.spec import sha256_file

    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    ckpt = load_checkpoint(cfg.checkpoint)
    if ckpt.spec.precision != "fp32":
        raise BadInputError(f"{cfg.checkpoint} is already {ckpt.spec.precision}; quantize the FP32 checkpoint")
    table = checkpoint_data(ckpt, cfg.data) if cfg.data else None
    fp32 = load_model(ckpt)
    engine = resolve_engine(cfg.engine)
    torch.backends.quantized.engine = engine
    if cfg.mode == "static":
        int8, audit, keep = _calibrate(fp32, ckpt, lambda: table, cfg, engine)
        recipe = {"scheme": "pytorch-fx-static", "engine": engine, "reduce_range": cfg.reduce_range,
                  "keep_float": keep, "float_logits": True, "calibration": audit.to_dict()}
    elif cfg.mode == "qat":
        int8, recipe = _qat(fp32, ckpt, table, cfg, engine)
    else:
        int8, recipe = quantize_dynamic(fp32), {"scheme": "pytorch-dynamic", "engine": engine}
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint).with_name(Path(cfg.checkpoint).stem + "_int8.pt")
    spec = ckpt.spec.replace(precision="int8", quantization=recipe,
                             source_checkpoint_sha256=sha256_file(cfg.checkpoint))
    # Staged under a hidden name until the comparison is done: a Ctrl-C or crash half-way never leaves a
    # model_int8.pt that looks finished but was never checked.
    staged = out.with_name(f".{out.name}.edgekit-partial")
    try:
        save_checkpoint(staged, Checkpoint(spec, ckpt.model, int8.state_dict(), ckpt.history, {}))
        reloaded = load_model(load_checkpoint(staged))
        check = [np.zeros(spec.input_shape(1), np.float32) + 0.5]
        if not np.array_equal(run_model(reloaded, check), run_model(int8, check)):
            raise BadInputError("the saved INT8 checkpoint does not reproduce the quantized model; nothing written")
        result = {"mode": cfg.mode, "engine": engine, "calibration": recipe.get("calibration"),
                  "training": recipe.get("training"), "test_images": 0,
                  "top1_agreement": None, "accuracy_delta_pp": None, "gate_problems": []}
        for name, model, path in (("fp32", fp32, Path(cfg.checkpoint)), ("int8", reloaded, staged)):
            result[name] = {"path": str(path), "accuracy": None, "size_mb": path.stat().st_size / 1e6,
                            "latency_ms": latency_ms(model, spec), "threads": torch.get_num_threads()}
        if table is not None:
            _compare(result, table, spec, fp32, reloaded, cfg)
        os.replace(staged, out)
        result["int8"]["path"] = str(out)
    finally:
        if staged.exists():
            staged.unlink()
    result["size_ratio"] = result["int8"]["size_mb"] / result["fp32"]["size_mb"]
    result["speedup"] = result["fp32"]["latency_ms"] / result["int8"]["latency_ms"]
    return result


def _compare(result: dict, table, spec, fp32, int8, cfg: QuantizeConfig) -> None:
    """FP32 vs INT8 on the test split: agreement, accuracy (labelled data), and the INT8 gate of verify."""
    from edgekit.core.metrics import predictions
    from edgekit.export.verify import TOLERANCES

    test = table.indices("test")[: cfg.limit_test or None]
    batches = list(_test_batches(table, spec, test, cfg.batch_size))
    preds = {k: predictions(run_model(m, batches), spec.binary) for k, m in (("fp32", fp32), ("int8", int8))}
    gate = TOLERANCES["int8"]
    result["test_images"] = int(len(test))
    result["top1_agreement"] = float((preds["fp32"] == preds["int8"]).mean())
    if result["top1_agreement"] < gate["min_agreement"]:
        result["gate_problems"].append(f"agreement {result['top1_agreement']:.4f} < {gate['min_agreement']}")
    if table.labelled:
        for name in ("fp32", "int8"):
            result[name]["accuracy"] = float((preds[name] == table.labels[test]).mean())
        result["accuracy_delta_pp"] = 100 * (result["int8"]["accuracy"] - result["fp32"]["accuracy"])
        if result["accuracy_delta_pp"] < gate["min_delta_pp"]:
            result["gate_problems"].append(f"accuracy {result['accuracy_delta_pp']:+.2f} pp < {gate['min_delta_pp']} pp")


def format_comparison(result: dict) -> str:
    rows = [f"{'':<6}{'accuracy':>10}{'size MB':>10}{'latency ms (bs1)':>18}"]
    for name in ("fp32", "int8"):
        r = result[name]
        accuracy = "-" if r["accuracy"] is None else f"{r['accuracy']:.4f}"
        rows.append(f"{name.upper():<6}{accuracy:>10}{r['size_mb']:>10.2f}{r['latency_ms']:>18.2f}")
    delta = "-" if result["accuracy_delta_pp"] is None else f"{result['accuracy_delta_pp']:+.2f} pp"
    agreement = "-" if result["top1_agreement"] is None else f"{result['top1_agreement']:.4f}"
    rows.append(f"INT8 vs FP32: accuracy {delta}, size x{result['size_ratio']:.2f}, speed x{result['speedup']:.2f}, "
                f"top-1 agreement {agreement} ({result['test_images']} test images, {result['mode']}, engine "
                f"{result['engine']}, {result['fp32']['threads']} threads)")
    if result.get("training"):
        qat = result["training"]
        kd = (f", self-distillation alpha {qat['kd_alpha']:g} T {qat['kd_temperature']:g}"
              if qat.get("kd_alpha") else "")
        rows.append(f"quantization-aware training: {qat['epochs']} epochs on {qat['images']} images, lr {qat['lr']:g}"
                    f"{kd}, final train loss {qat['history'][-1]['train_loss']:.4f}")
    if result.get("calibration"):
        cal = result["calibration"]
        classes = (f", {sum(1 for c in cal['class_counts'].values() if c)}/{len(cal['class_counts'])} classes"
                   if cal["class_counts"] else "")
        rows.append(f"calibration: {cal['samples']} images from {cal.get('source') or 'the train split'}{classes}, "
                    f"sha256 {cal['sha256'][:16]}")
    return "\n".join(rows)
