"""`edgekit verify`: the same held-out images through the PyTorch reference and every artifact.

Each artifact is fed through *its own* spec (a baked artifact gets uint8 frames, a plain one normalised
floats), so the check covers preprocessing as well as the graph. Tolerances depend on the precision;
breaking one makes the command exit non-zero, so it can gate CI.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.errors import BadInputError, EdgekitError, require
from edgekit.spec import ModelSpec, preprocess

# fp32: logits must match elementwise within atol + rtol * |reference| (numpy.allclose's rule: two
# correct FP32 kernels sum in different orders, so large logits differ more in absolute terms);
# fp16 / int8: decisions must. Accuracy deltas are in percentage points.
TOLERANCES = {
    "fp32": {"atol": 1e-4, "rtol": 1e-5},
    "fp16": {"min_agreement": 0.99, "min_delta_pp": -0.5},
    "int8": {"min_agreement": 0.90, "min_delta_pp": -1.0},
}


class VerificationFailed(EdgekitError):
    exit_code = 1


@dataclass
class Row:
    name: str
    precision: str
    logits: np.ndarray
    max_abs: float = 0.0
    mean_abs: float = 0.0
    agreement: float = 1.0
    accuracy: float | None = None
    delta_pp: float | None = None
    status: str = "ok"
    problems: list[str] = field(default_factory=list)


def onnx_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    ort = require("onnxruntime", "onnx", "running ONNX models")
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    # onnxruntime's load errors are its own classes, not subclasses of RuntimeError.
    load_errors = tuple(getattr(state, n) for n in ("Fail", "InvalidProtobuf", "InvalidGraph", "InvalidArgument",
                                                     "NoSuchFile", "NotImplemented") if hasattr(state, n))
    try:
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except load_errors as exc:
        raise BadInputError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0]}") from exc
    name = session.get_inputs()[0].name
    fixed = session.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) else None

    def run(batch: np.ndarray) -> np.ndarray:
        parts = [batch[i:i + step] for i in range(0, len(batch), step)] if step else [batch]
        return np.concatenate([session.run(None, {name: p})[0] for p in parts])

    return run


def openvino_runner(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    ov = require("openvino", "openvino", "running OpenVINO models")
    if not path.with_suffix(".bin").is_file():
        raise BadInputError(f"{path}: the weights file {path.with_suffix('.bin').name} is missing")
    try:
        # f32 inference: on CPUs with bf16 units OpenVINO would otherwise run "FP32" models in bf16.
        compiled = ov.Core().compile_model(str(path), "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    except RuntimeError as exc:
        raise BadInputError(f"OpenVINO cannot load {path}: {str(exc).splitlines()[0]}") from exc
    request = compiled.create_infer_request()

    def run(batch: np.ndarray) -> np.ndarray:
        return np.concatenate([request.infer({0: image[None]})[compiled.output(0)].copy() for image in batch])

    return run


RUNNERS = {".onnx": onnx_runner, ".xml": openvino_runner}


def runner_for(path: Path) -> Callable[[np.ndarray], np.ndarray]:
    if not path.is_file():
        raise BadInputError(f"model not found: {path}")
    try:
        return RUNNERS[path.suffix.lower()](path)
    except KeyError:
        raise BadInputError(f"{path}: not an exported model (expected .onnx or .xml)") from None


def held_out_images(table, count: int, seed: int = 0) -> np.ndarray:
    """Indices of up to ``count`` test images (all of them when count is 0), in a fixed order."""
    test = table.indices("test")
    if count and count < len(test):
        test = np.sort(np.random.default_rng(seed).choice(test, count, replace=False))
    return test


def _inputs(table, indices: np.ndarray, spec: ModelSpec) -> np.ndarray:
    return np.stack([preprocess(table.image(i), spec, source_color=table.color) for i in indices])


def compare(reference: np.ndarray, rows: list[Row], labels: np.ndarray | None, binary: bool) -> None:
    from edgekit.training.metrics import predictions

    ref_pred = predictions(reference, binary)
    ref_acc = float((ref_pred == labels).mean()) if labels is not None else None
    for row in rows:
        diff = np.abs(row.logits.astype(np.float64) - reference)
        row.max_abs, row.mean_abs = float(diff.max()), float(diff.mean())
        pred = predictions(row.logits, binary)
        row.agreement = float((pred == ref_pred).mean())
        if labels is not None:
            row.accuracy = float((pred == labels).mean())
            row.delta_pp = 100 * (row.accuracy - ref_acc)
        tol = TOLERANCES[row.precision]
        if "atol" in tol:
            excess = diff - (tol["atol"] + tol["rtol"] * np.abs(reference))
            if excess.max() > 0:
                worst = np.unravel_index(excess.argmax(), excess.shape)
                row.problems.append(f"|diff| {diff[worst]:.2e} at logit {reference[worst]:.2f} exceeds "
                                    f"{tol['atol']:.0e} + {tol['rtol']:.0e}*|logit|")
        if "min_agreement" in tol and row.agreement < tol["min_agreement"]:
            row.problems.append(f"agreement {row.agreement:.4f} < {tol['min_agreement']}")
        if "min_delta_pp" in tol and row.delta_pp is not None and row.delta_pp < tol["min_delta_pp"]:
            row.problems.append(f"accuracy {row.delta_pp:+.2f} pp < {tol['min_delta_pp']} pp")
        row.status = "FAIL: " + "; ".join(row.problems) if row.problems else "ok"


def verify(models: list[Path], reference_checkpoint: Path, data: str, images: int = 1000,
           seed: int = 0) -> tuple[list[Row], str]:
    """Run everything on the same held-out images; returns the rows and a printable table."""
    from edgekit.export.artifacts import read_sidecar
    from edgekit.training.checkpoint import load_checkpoint
    from edgekit.training.quantize import checkpoint_data, load_model, run_model

    ckpt = load_checkpoint(reference_checkpoint)
    if ckpt.spec.precision != "fp32":
        raise BadInputError(f"the reference must be an FP32 checkpoint; {reference_checkpoint} is {ckpt.spec.precision}")
    table = checkpoint_data(ckpt, data)
    indices = held_out_images(table, images, seed)
    labels = table.labels[indices]
    reference = run_model(load_model(ckpt), [_inputs(table, indices, ckpt.spec)]).astype(np.float64)
    rows = [Row(f"PyTorch FP32 ({Path(reference_checkpoint).name})", "fp32", reference)]
    for path in map(Path, models):
        spec, _ = read_sidecar(path)
        if tuple(spec.labels) != tuple(ckpt.spec.labels):
            raise BadInputError(f"{path} has different labels from {reference_checkpoint}")
        run = runner_for(path)
        rows.append(Row(path.name, spec.precision, run(_inputs(table, indices, spec))))
    compare(reference, rows[1:], labels, ckpt.spec.binary)
    from edgekit.training.metrics import predictions

    rows[0].accuracy = float((predictions(reference, ckpt.spec.binary) == labels).mean())
    return rows, format_rows(rows, len(indices))


def format_rows(rows: list[Row], count: int) -> str:
    head = f"{'model':<34}{'prec':>6}{'max|diff|':>11}{'mean|diff|':>12}{'agree':>8}{'acc':>8}{'delta pp':>10}  status"
    lines = [f"verified on {count} held-out test images", head]
    for r in rows:
        acc = f"{r.accuracy:.4f}" if r.accuracy is not None else "-"
        delta = f"{r.delta_pp:+.2f}" if r.delta_pp is not None else "-"
        ref = r is rows[0]
        lines.append(f"{r.name[:33]:<34}{r.precision:>6}{'-' if ref else f'{r.max_abs:.2e}':>11}"
                     f"{'-' if ref else f'{r.mean_abs:.2e}':>12}{'-' if ref else f'{r.agreement:.4f}':>8}"
                     f"{acc:>8}{'-' if ref else delta:>10}  {'reference' if ref else r.status}")
    return "\n".join(lines)
