"""`edgekit optimize`: try the sensible INT8 (and FP16) candidates, keep the fastest within an accuracy budget.

Every candidate is a real export (the same code as `edgekit export`, verification off), evaluated against the
FP32 ONNX model on the evaluation images: top-1 agreement always, the accuracy delta when those images are
labelled. The budget ``max_drop`` is on agreement (1 - agreement <= max_drop) for unlabelled images and on
accuracy (in fractions: 0.01 = 1 pp) for labelled ones. Latency is a quick in-process p50 of batch-1 calls
with the same thread count for every candidate (for publishable numbers use `edgekit bench`, which runs
each row in its own process). The winner is copied to ``out`` with its sidecar.
"""
from __future__ import annotations

import logging
import shutil
import tempfile
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from edgekit.core import checks
from edgekit.core.errors import BadInputError, EdgekitError

log = logging.getLogger(__name__)

# (name, runtime, ExportConfig changes). Cheap first; each is one export.
CANDIDATES = (
    ("onnx int8 nncf full", "onnxruntime", {"formats": ("onnx",), "int8": True}),
    ("onnx int8 nncf fast", "onnxruntime", {"formats": ("onnx",), "int8": True, "onnx_bias_correction": "fast"}),
    ("onnx int8 nncf keep first,last", "onnxruntime", {"formats": ("onnx",), "int8": True,
                                                       "keep_float": ("first", "last")}),
    ("onnx int8 ort minmax", "onnxruntime", {"formats": ("onnx",), "int8": True, "onnx_int8": "ort"}),
    ("onnx int8 ort percentile", "onnxruntime", {"formats": ("onnx",), "int8": True, "onnx_int8": "ort",
                                                 "calib_method": "percentile"}),
    ("openvino int8 nncf full", "openvino", {"formats": ("openvino",), "int8": True}),
    ("openvino int8 nncf fast", "openvino", {"formats": ("openvino",), "int8": True, "ov_bias_correction": "fast"}),
    ("openvino fp16", "openvino", {"formats": ("openvino",), "fp16": True}),
)


@dataclass(frozen=True)
class OptimizeConfig:
    checkpoint: str
    calib: str  # unlabelled calibration images (folder, video, CSV)
    eval: str  # evaluation images: labelled data, or unlabelled images (agreement only)
    max_drop: float = 0.01
    runtimes: tuple[str, ...] = ("onnxruntime", "openvino")
    out: str | None = None  # default: <checkpoint folder>/optimized
    calib_size: int = 300
    images: int = 0  # evaluation images (0 = all)
    threads: int = 2
    runs: int = 50

    def __post_init__(self) -> None:
        checks.within("--max-drop", self.max_drop, 0, 1)
        for runtime in self.runtimes:
            checks.one_of("--runtimes", runtime, ("onnxruntime", "openvino"))
        checks.within("--calib-size", self.calib_size, 1, 100_000)
        checks.at_least("--images", self.images, 0)
        checks.threads("--threads", self.threads, allow_default=False)
        checks.within("--runs", self.runs, 1, 100_000)
        for name, path in (("--calib", self.calib), ("--eval", self.eval)):
            if not Path(path).exists():
                raise BadInputError(f"{name} {path}: not found")


@dataclass
class Candidate:
    name: str
    runtime: str
    path: Path | None = None
    agreement: float | None = None
    delta_pp: float | None = None
    p50_ms: float | None = None
    size_mb: float | None = None
    within: bool = False
    error: str = ""
    files: list[Path] = field(default_factory=list)


def _evaluate(path: Path, runtime: str, table, indices, threads: int, runs: int) -> tuple[np.ndarray, float]:
    """(logits on the evaluation images, p50 ms of batch-1 calls)."""
    from edgekit.runtimes import RuntimeOptions, load_runtime

    rt = load_runtime(path, runtime, RuntimeOptions(threads=threads))
    try:
        logits = np.concatenate([rt.infer(table.inputs(indices[i:i + 1], rt.spec)) for i in range(len(indices))])
        x = table.inputs(indices[:1], rt.spec)
        for _ in range(5):
            rt.infer(x)
        times = []
        for _ in range(runs):
            start = time.perf_counter()
            rt.infer(x)
            times.append(time.perf_counter() - start)
    finally:
        rt.close()
    return logits, float(np.median(times) * 1e3)


def optimize(cfg: OptimizeConfig, progress=lambda line: None) -> tuple[list[Candidate], Candidate | None, dict]:
    """Run every candidate; returns them, the winner (None when none is within budget) and the FP32 row."""
    from edgekit.core.data import test_subset
    from edgekit.core.metrics import predictions
    from edgekit.export.core import ExportConfig, export
    from edgekit.models.checkpoint import load_checkpoint
    from edgekit.models.loading import checkpoint_data

    ckpt = load_checkpoint(cfg.checkpoint)
    out = Path(cfg.out) if cfg.out else Path(cfg.checkpoint).parent / "optimized"
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot write to {out}: {exc.strerror}") from exc
    table = checkpoint_data(ckpt, cfg.eval)
    indices = test_subset(table, cfg.images)
    if not len(indices):
        raise BadInputError(f"{cfg.eval}: no evaluation images")
    work = Path(tempfile.mkdtemp(prefix="edgekit-optimize-"))
    try:
        base = ExportConfig(checkpoint=cfg.checkpoint, calib=cfg.calib, calib_size=cfg.calib_size, verify=False,
                            out=str(work / "fp32"), formats=("onnx",))
        export(base)
        ref_logits, ref_ms = _evaluate(work / "fp32" / "model.onnx", "onnxruntime", table, indices, cfg.threads, cfg.runs)
        ref = predictions(ref_logits, ckpt.spec.binary)
        labels = table.labels[indices] if table.labelled else None
        fp32 = {"p50_ms": ref_ms, "size_mb": (work / "fp32" / "model.onnx").stat().st_size / 1e6,
                "accuracy": float((ref == labels).mean()) if labels is not None else None}
        results = []
        for name, runtime, changes in CANDIDATES:
            if runtime not in cfg.runtimes:
                continue
            candidate = Candidate(name, runtime)
            folder = work / name.replace(" ", "_").replace(",", "_")
            try:
                result = export(replace(base, out=str(folder), **changes))
                artifact = next(a for a in result.artifacts if a.precision != "fp32")
                candidate.path, candidate.files = artifact.path, artifact.files
                candidate.size_mb = artifact.size_bytes / 1e6
                logits, candidate.p50_ms = _evaluate(artifact.path, runtime, table, indices, cfg.threads, cfg.runs)
                pred = predictions(logits, ckpt.spec.binary)
                candidate.agreement = float((pred == ref).mean())
                if labels is not None:
                    candidate.delta_pp = 100 * (float((pred == labels).mean()) - fp32["accuracy"])
                    candidate.within = -candidate.delta_pp / 100 <= cfg.max_drop
                else:
                    candidate.within = 1 - candidate.agreement <= cfg.max_drop
            except EdgekitError as exc:  # a route that cannot run here (missing runtime, bad node) is a row
                candidate.error = str(exc)
            results.append(candidate)
            progress(format_row(candidate))
        fitting = [c for c in results if c.within]
        winner = min(fitting, key=lambda c: c.p50_ms) if fitting else None
        if winner is not None:
            target = out / winner.path.name
            for file in winner.files:
                shutil.copy2(file, out / file.name)
            winner.path = target
        return results, winner, fp32
    finally:
        shutil.rmtree(work, ignore_errors=True)


def format_row(c: Candidate) -> str:
    if c.error:
        return f"{c.name:<34}{'':>8}{'':>10}{'':>10}{'':>9}  error: {c.error}"
    delta = "-" if c.delta_pp is None else f"{c.delta_pp:+.2f}"
    return (f"{c.name:<34}{c.agreement:>8.4f}{delta:>10}{c.p50_ms:>10.2f}{c.size_mb:>9.2f}  "
            + ("within budget" if c.within else "over budget"))


def format_table(results: list[Candidate], winner: Candidate | None, fp32: dict, cfg: OptimizeConfig) -> str:
    lines = [f"{'candidate':<34}{'agree':>8}{'delta pp':>10}{'p50 ms':>10}{'MB':>9}",
             f"{'onnx fp32 (reference)':<34}{1:>8.4f}{'-':>10}{fp32['p50_ms']:>10.2f}{fp32['size_mb']:>9.2f}"]
    lines += [format_row(c) for c in results]
    budget = "accuracy drop" if fp32["accuracy"] is not None else "1 - agreement"
    if winner is None:
        lines.append(f"no candidate within --max-drop {cfg.max_drop} ({budget}); nothing written")
    else:
        lines.append(f"fastest within --max-drop {cfg.max_drop} ({budget}): {winner.name}, "
                     f"{fp32['p50_ms'] / winner.p50_ms:.2f}x the FP32 ONNX speed -> {winner.path}")
    return "\n".join(lines)
