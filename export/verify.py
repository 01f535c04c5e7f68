"""`edgekit verify`: the same held-out images through the PyTorch reference and every artifact.

Each artifact is fed through *its own* spec (a baked artifact gets uint8 frames, a plain one normalised
floats), so the check covers preprocessing as well as the graph. Tolerances depend on the precision;
breaking one makes the command exit non-zero, so it can gate CI.

The reference is the checkpoint run by PyTorch in float64. PyTorch's own FP32 result is not exact: on the
Fashion-MNIST MobileNetV2 it is up to 1.1e-4 away from float64 (benchmarks/scripts/fp32_noise_floor.py), as far as a
correct FP32 export is from it. Against float64 each artifact's difference is its own error, not the sum of
two FP32 errors. PyTorch FP32 gets a row of its own, measured the same way but never gating, so the table
shows how large the FP32 error of the framework itself is.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.core.errors import BadInputError, EdgekitError
from edgekit.runtimes.base import load_runtime
from edgekit.core.data import test_subset

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
    gates: bool = True  # False for the PyTorch FP32 row: shown for scale, never fails the command
    max_abs: float = 0.0
    mean_abs: float = 0.0
    agreement: float = 1.0
    top5: float | None = None  # share of images whose reference top-1 is in this model's top 5 (>= 5 classes)
    accuracy: float | None = None
    delta_pp: float | None = None
    status: str = "ok"
    problems: list[str] = field(default_factory=list)


def compare(reference: np.ndarray, rows: list[Row], labels: np.ndarray | None, binary: bool) -> None:
    from edgekit.core.metrics import predictions

    ref_pred = predictions(reference, binary)
    ref_acc = float((ref_pred == labels).mean()) if labels is not None else None
    for row in rows:
        if not np.isfinite(row.logits).all():  # NaN compares false everywhere: it would pass every check below
            row.problems.append("non-finite outputs (NaN or infinity)")
            row.agreement, row.max_abs, row.mean_abs = 0.0, float("inf"), float("inf")
            row.status = "FAIL: " + row.problems[0] if row.gates else "not gated: non-finite outputs"
            continue
        diff = np.abs(row.logits.astype(np.float64) - reference)
        row.max_abs, row.mean_abs = float(diff.max()), float(diff.mean())
        pred = predictions(row.logits, binary)
        row.agreement = float((pred == ref_pred).mean())
        if not binary and row.logits.shape[1] >= 5:
            top5 = np.argpartition(-row.logits, 4, axis=1)[:, :5]
            row.top5 = float((top5 == ref_pred[:, None]).any(axis=1).mean())
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
        if not row.gates:
            row.status = "not gated: PyTorch's own FP32 error" + (" (beyond the fp32 tolerance)" if row.problems else "")
        else:
            row.status = "FAIL: " + "; ".join(row.problems) if row.problems else "ok"


def failures(rows: list[Row]) -> list[Row]:
    """The rows that break a tolerance (the reference and the PyTorch FP32 row never do)."""
    return [r for r in rows if r.gates and r.problems]


def verify(models: list[Path], reference_checkpoint: Path, data: str, images: int = 1000,
           seed: int = 0) -> tuple[list[Row], str]:
    """Run everything on the same held-out images; returns the rows and a printable table."""
    from edgekit.models.checkpoint import load_checkpoint
    from edgekit.models.loading import checkpoint_data, load_model, run_model

    ckpt = load_checkpoint(reference_checkpoint)
    # An INT8 PyTorch checkpoint is the reference of the files exported from it (the same quantized model in
    # another runtime); the INT8 gate then bounds what the runtimes' kernels add.
    int8_reference = ckpt.spec.precision == "int8" and ckpt.spec.quantization.get("scheme") == "pytorch-fx-static"
    if ckpt.spec.precision != "fp32" and not int8_reference:
        raise BadInputError(f"the reference must be an FP32 checkpoint (or a PyTorch static INT8 one for the files "
                            f"exported from it); {reference_checkpoint} is {ckpt.spec.precision}")
    table = checkpoint_data(ckpt, data)
    indices = test_subset(table, images, seed)
    labels = table.labels[indices] if table.labelled else None  # unlabelled images: agreement only
    inputs = table.inputs(indices, ckpt.spec)
    model = load_model(ckpt)
    chunks = [inputs[i:i + 500] for i in range(0, len(inputs), 500)]
    pytorch_fp32 = run_model(model, chunks)
    name = Path(reference_checkpoint).name
    if int8_reference:  # quantized kernels have no float64 version: the INT8 model is its own reference
        reference = pytorch_fp32
        rows = [Row(f"PyTorch INT8 ({name})", "int8", reference)]
    else:
        reference = run_model(model.double(), [c.astype(np.float64) for c in chunks])
        rows = [Row(f"PyTorch float64 ({name})", "fp64", reference),
                Row(f"PyTorch FP32 ({name})", "fp32", pytorch_fp32, gates=False)]
    if not np.isfinite(reference).all():
        raise VerificationFailed(f"{reference_checkpoint} itself gives NaN or infinite outputs: nothing to verify against")
    for path in map(Path, models):
        runtime = load_runtime(path)
        spec = runtime.spec
        if tuple(spec.labels) != tuple(ckpt.spec.labels):
            raise BadInputError(f"{path} has different labels from {reference_checkpoint}")
        rows.append(Row(path.name, spec.precision, runtime.infer(table.inputs(indices, spec))))
        runtime.close()
    compare(reference, rows[1:], labels, ckpt.spec.binary)
    from edgekit.core.metrics import predictions

    if labels is not None:
        rows[0].accuracy = float((predictions(reference, ckpt.spec.binary) == labels).mean())
    return rows, format_rows(rows, len(indices), ckpt.spec.samples)


def format_rows(rows: list[Row], count: int, samples: str = "images") -> str:
    head = (f"{'model':<34}{'prec':>6}{'max|diff|':>11}{'mean|diff|':>12}{'agree':>8}{'top5':>7}{'acc':>8}"
            f"{'delta pp':>10}  status")
    lines = [f"verified on {count} held-out test {samples}", head]
    for r in rows:
        acc = f"{r.accuracy:.4f}" if r.accuracy is not None else "-"
        delta = f"{r.delta_pp:+.2f}" if r.delta_pp is not None else "-"
        ref = r is rows[0]
        lines.append(f"{r.name[:33]:<34}{r.precision:>6}{'-' if ref else f'{r.max_abs:.2e}':>11}"
                     f"{'-' if ref else f'{r.mean_abs:.2e}':>12}{'-' if ref else f'{r.agreement:.4f}':>8}"
                     f"{'-' if ref or r.top5 is None else f'{r.top5:.3f}':>7}"
                     f"{acc:>8}{'-' if ref else delta:>10}  {'reference' if ref else r.status}")
    return "\n".join(lines)
