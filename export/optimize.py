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
# "keep sensitive" keeps in float the consumers of the SENSITIVE_LAYERS activations whose quantization costs
# the model's output most (export/int8_debug.bypass_sensitivity on the first candidate).
SENSITIVE = "keep sensitive"
# NNCF's accuracy control (OpenVINO): layers back to float until agreement on the calibration images drops
# at most --max-drop; the table then measures it on the evaluation images like every other candidate.
ACCURACY_CONTROL = "openvino int8 nncf accuracy control"
SENSITIVE_LAYERS = 4
SENSITIVITY_IMAGES = 32
CANDIDATES = (
    ("onnx int8 nncf full", "onnxruntime", {"formats": ("onnx",), "int8": True}),
    ("onnx int8 nncf fast", "onnxruntime", {"formats": ("onnx",), "int8": True, "onnx_bias_correction": "fast"}),
    ("onnx int8 nncf keep first,last", "onnxruntime", {"formats": ("onnx",), "int8": True,
                                                       "keep_float": ("first", "last")}),
    (f"onnx int8 nncf {SENSITIVE}", "onnxruntime", {"formats": ("onnx",), "int8": True}),
    ("onnx int8 nncf keep depthwise", "onnxruntime", {"formats": ("onnx",), "int8": True,
                                                      "keep_float": ("depthwise",)}),
    ("onnx int8 ort minmax", "onnxruntime", {"formats": ("onnx",), "int8": True, "onnx_int8": "ort"}),
    ("onnx int8 ort percentile", "onnxruntime", {"formats": ("onnx",), "int8": True, "onnx_int8": "ort",
                                                 "calib_method": "percentile"}),
    ("openvino int8 nncf full", "openvino", {"formats": ("openvino",), "int8": True}),
    ("openvino int8 nncf fast", "openvino", {"formats": ("openvino",), "int8": True, "ov_bias_correction": "fast"}),
    ("openvino int8 nncf keep depthwise", "openvino", {"formats": ("openvino",), "int8": True,
                                                       "keep_float": ("depthwise",)}),
    ("openvino int8 nncf keep first,depthwise", "openvino", {"formats": ("openvino",), "int8": True,
                                                             "keep_float": ("first", "depthwise")}),
    (ACCURACY_CONTROL, "openvino", {"formats": ("openvino",), "int8": True}),
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
    speedup: float | None = None  # FP32 p50 on the same runtime / this p50
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
        export(replace(base, formats=("onnx", "openvino") if "openvino" in cfg.runtimes else ("onnx",)))
        ref_logits, ref_ms = _evaluate(work / "fp32" / "model.onnx", "onnxruntime", table, indices, cfg.threads, cfg.runs)
        ref = predictions(ref_logits, ckpt.spec.binary)
        labels = table.labels[indices] if table.labelled else None
        fp32 = {"p50_ms": ref_ms, "size_mb": (work / "fp32" / "model.onnx").stat().st_size / 1e6,
                "accuracy": float((ref == labels).mean()) if labels is not None else None,
                "runtimes": {"onnxruntime": ref_ms}}
        if "openvino" in cfg.runtimes:
            fp32["runtimes"]["openvino"] = _evaluate(work / "fp32" / "model.xml", "openvino", table, indices[:1],
                                                     cfg.threads, cfg.runs)[1]
        results = []
        for name, runtime, changes in CANDIDATES:
            if runtime not in cfg.runtimes:
                continue
            candidate = Candidate(name, runtime)
            folder = work / name.replace(" ", "_").replace(",", "_")
            try:
                if name.endswith(SENSITIVE):
                    first = next((c for c in results if c.runtime == "onnxruntime" and c.path), None)
                    if first is None:
                        raise EdgekitError("needs the first ONNX INT8 candidate, which did not build")
                    changes = {**changes, "keep_float": _sensitive_nodes(work / "fp32" / "model.onnx", first.path,
                                                                         cfg, ckpt.spec)}
                    candidate.name = f"onnx int8 nncf keep {len(changes['keep_float'])} most sensitive"
                if name == ACCURACY_CONTROL:
                    changes = {**changes, "ov_max_drop": cfg.max_drop}
                result = export(replace(base, out=str(folder), **changes))
                artifact = next(a for a in result.artifacts if a.precision != "fp32")
                candidate.path, candidate.files = artifact.path, artifact.files
                candidate.size_mb = artifact.size_bytes / 1e6
                logits, candidate.p50_ms = _evaluate(artifact.path, runtime, table, indices, cfg.threads, cfg.runs)
                candidate.speedup = fp32["runtimes"][runtime] / candidate.p50_ms
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
        # A candidate slower than FP32 on its own runtime (FP16 on a CPU without FP16 arithmetic) is no win.
        fitting = [c for c in results if c.within and (c.speedup or 0) > 1.0]
        winner = min(fitting, key=lambda c: c.p50_ms) if fitting else None
        if winner is not None:
            target = out / winner.path.name
            for file in winner.files:
                shutil.copy2(file, out / file.name)
            winner.path = target
        return results, winner, fp32
    finally:
        shutil.rmtree(work, ignore_errors=True)


def _sensitive_nodes(fp32_path: Path, int8_path: Path, cfg: OptimizeConfig, spec) -> tuple[str, ...]:
    """Consumers of the SENSITIVE_LAYERS activations whose bypass raises the output SQNR most."""
    from edgekit.core.calibration import calibration_table
    from edgekit.export.int8_debug import bypass_sensitivity
    from edgekit.export.onnx_format import INPUT_NAME

    table, _ = calibration_table(cfg.calib, None, SENSITIVITY_IMAGES)
    indices = np.arange(min(SENSITIVITY_IMAGES, len(table)))
    images = [table.inputs(indices[i:i + 1], spec) for i in range(len(indices))]
    rows = bypass_sensitivity(fp32_path, int8_path, images, INPUT_NAME)
    return tuple(dict.fromkeys(r["consumer"] for r in rows[:SENSITIVE_LAYERS] if r["consumer"]))


def format_row(c: Candidate) -> str:
    if c.error:
        return f"{c.name:<40}{'':>8}{'':>10}{'':>10}{'':>8}{'':>9}  error: {c.error}"
    delta = "-" if c.delta_pp is None else f"{c.delta_pp:+.2f}"
    return (f"{c.name:<40}{c.agreement:>8.4f}{delta:>10}{c.p50_ms:>10.2f}{c.speedup:>7.2f}x{c.size_mb:>9.2f}  "
            + ("within budget" if c.within else "over budget"))


def format_table(results: list[Candidate], winner: Candidate | None, fp32: dict, cfg: OptimizeConfig) -> str:
    lines = [f"{'candidate':<40}{'agree':>8}{'delta pp':>10}{'p50 ms':>10}{'x fp32':>8}{'MB':>9}"]
    for runtime, ms in fp32["runtimes"].items():
        lines.append(f"{'fp32 on ' + runtime + ' (reference)':<40}{1:>8.4f}{'-':>10}{ms:>10.2f}{1:>7.2f}x"
                     f"{fp32['size_mb']:>9.2f}")
    lines += [format_row(c) for c in results]
    budget = "accuracy drop" if fp32["accuracy"] is not None else "1 - agreement"
    if winner is None:
        lines.append(f"no candidate faster than FP32 within --max-drop {cfg.max_drop} ({budget}); nothing written "
                     "(keep the FP32 model, or allow a larger drop)")
    else:
        lines.append(f"fastest within --max-drop {cfg.max_drop} ({budget}): {winner.name}, "
                     f"{winner.speedup:.2f}x the FP32 speed on {winner.runtime} -> {winner.path}")
    return "\n".join(lines)
