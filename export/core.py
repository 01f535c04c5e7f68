"""`edgekit export`: checkpoint -> deployable artifacts, each verified against PyTorch.

Exporters are plain functions registered by format name with one signature, ``(job) -> [Artifact]``.
:func:`export` wraps them: it times each one, writes into a staging folder, verifies, and only then moves
the files into place, so a failure never leaves a half-written model behind.
"""
from __future__ import annotations

import logging
import os
import shutil
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgekit.core import checks
from edgekit.core.errors import BadInputError, UnknownNameError, writing
from edgekit.core.artifacts import OWNER_FILE, STAGE_PREFIX, Artifact, write_sidecar

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportConfig:
    checkpoint: str
    formats: tuple[str, ...] = ("onnx",)
    out: str | None = None  # default: the checkpoint's folder
    int8: bool = False
    fp16: bool = False  # OpenVINO only
    data: str | None = None  # calibration / verification data (default: what the checkpoint was trained on)
    calib: str | None = None  # unlabelled calibration images (folder, video, CSV) instead of --data's train split
    calib_size: int = 1024
    calib_batch: int = 32
    calib_method: str = "minmax"
    activation_type: str = "auto"  # auto (from the CPU), u8 or s8
    reduce_range: bool | None = None  # None: from the CPU
    exclude: tuple[str, ...] = ()
    keep_float: tuple[str, ...] = ()  # layers kept in float on every INT8 route: first, last, node names
    onnx_int8: str = "nncf"  # "nncf" (NNCF PTQ of the ONNX graph) or "ort" (onnxruntime quantize_static)
    onnx_bias_correction: str = "full"  # NNCF on ONNX: see onnx_format.nncf_qdq
    ov_int8: str = "nncf"  # "nncf" (NNCF PTQ on the IR) or "qdq" (from the QDQ ONNX); see openvino_format
    ov_bias_correction: str = "full"  # NNCF: "full" BiasCorrection or "fast" (NNCF's default); see nncf_int8
    ov_max_drop: float | None = None  # NNCF accuracy control on OpenVINO INT8 (agreement drop on calib images)
    target: str = "host"  # the CPU the INT8 models are for (onnx_format.TARGETS); --bundle pi: pi4
    bake_preprocess: bool = False
    input_color: str = "BGR"
    dynamic_batch: bool = False
    verify: bool = True
    verify_images: int = 1000
    seed: int = 0
    debug_layers: str | None = None  # CSV: per-layer error of the ONNX INT8 model (export/int8_debug.py)

    def __post_init__(self) -> None:
        for name, value, allowed in (("ov_int8", self.ov_int8, ("nncf", "qdq")), ("onnx_int8", self.onnx_int8, ("nncf", "ort", "dynamic")),
                                     ("onnx_bias_correction", self.onnx_bias_correction, ("full", "fast")),
                                     ("ov_bias_correction", self.ov_bias_correction, ("full", "fast")),
                                     ("calib_method", self.calib_method, ("minmax", "entropy", "percentile")),
                                     ("activation_type", self.activation_type, ("auto", "u8", "s8"))):
            if value not in allowed:
                raise UnknownNameError(name.replace("_", " "), value, allowed)
        checks.one_of("--input-color", self.input_color, ("BGR", "RGB", "GRAY"))
        checks.within("--calib-size", self.calib_size, 1, 1_000_000)
        checks.within("--calib-batch", self.calib_batch, 1, 4096)
        checks.at_least("--verify-images", self.verify_images, 0)
        from edgekit.export.onnx_format import TARGETS

        if self.target not in TARGETS:
            raise UnknownNameError("target", self.target, tuple(TARGETS))
        if self.onnx_int8 == "dynamic" and self.ov_int8 == "qdq" and "openvino" in self.formats:
            raise BadInputError("--ov-int8 qdq converts the static QDQ graph; dynamic ONNX INT8 has none (use "
                                "--ov-int8 nncf, or --onnx-int8 nncf|ort)")
        if self.ov_max_drop is not None:
            checks.within("--ov-max-drop", self.ov_max_drop, 0, 1)
            if self.ov_int8 != "nncf":
                raise BadInputError("--ov-max-drop needs --ov-int8 nncf (NNCF's accuracy control)")
        if self.debug_layers and not (self.int8 and "onnx" in self.formats):
            raise BadInputError("--debug-layers describes the ONNX INT8 model: add --int8 and --format onnx")


class ExportJob:
    """Shared state of one export: the loaded checkpoint, a work folder, and lazily built intermediates."""

    def __init__(self, cfg: ExportConfig, stage: Path, work: Path):
        from edgekit.models.checkpoint import load_checkpoint

        self.cfg, self.stage, self.work = cfg, stage, work
        self.ckpt = load_checkpoint(cfg.checkpoint)
        # A PyTorch static INT8 checkpoint (post-training or quantization-aware trained) exports as it is:
        # torch's ONNX exporter writes its quantized ops as QuantizeLinear/DequantizeLinear around float ops,
        # with the checkpoint's own scales, and OpenVINO reads that QDQ file. Nothing is re-calibrated.
        recipe = self.ckpt.spec.quantization
        self.int8_checkpoint = self.ckpt.spec.precision == "int8" and recipe.get("scheme") == "pytorch-fx-static"
        if self.ckpt.spec.precision != "fp32" and not self.int8_checkpoint:
            raise BadInputError(f"{cfg.checkpoint} is {self.ckpt.spec.precision} ({recipe.get('scheme', '?')}); "
                                "export the FP32 checkpoint (add --int8 for INT8 artifacts)")
        if self.int8_checkpoint and (cfg.fp16 or cfg.bake_preprocess or cfg.debug_layers):
            raise BadInputError(f"{cfg.checkpoint} is already INT8: it exports as INT8 ONNX/OpenVINO as it is; "
                                "--fp16, --bake-preprocess and --debug-layers need the FP32 checkpoint")
        if self.int8_checkpoint and cfg.int8:
            log.info("%s is already INT8: exporting its own quantization (no re-calibration)", cfg.checkpoint)
        from edgekit.core.spec import sha256_file

        spec = self.ckpt.spec.replace(source_checkpoint_sha256=sha256_file(cfg.checkpoint))
        if cfg.bake_preprocess:
            from edgekit.export.onnx_format import baked_spec

            spec = baked_spec(spec, cfg.input_color)
        self.spec = spec
        self._fp32_onnx: Path | None = None
        self._int8_onnx: tuple[Path, dict] | None = None
        self._table = None
        self._warned = False  # the small-calibration warning, once per export
        self._calib = None  # (table, source) of the calibration images, loaded once for every INT8 route
        self.clock = time.perf_counter()  # start of the artifact being made, for its "exported in" time

    def table(self):
        """The data for calibration: --data, else the folder the checkpoint was trained on."""
        if self._table is None:
            from edgekit.models.loading import checkpoint_data

            data = data_source(self.cfg, self.ckpt)
            if data is None:
                raise BadInputError("INT8 export needs calibration images: pass --calib DIR|VIDEO (any unlabelled "
                                    "images like the ones the model will see) or --data (the training data)")
            self._table = checkpoint_data(self.ckpt, data)
        return self._table

    def calibration(self, limit: int | None = None):
        """The shared calibration iterator (same images and preprocessing for every INT8 route) and its audit;
        ``limit`` caps the number of images below --calib-size (a memory budget)."""
        from edgekit.core.calibration import (MIN_RECOMMENDED_SAMPLES, CalibrationAudit, calibration_batches,
                                              calibration_table)

        cfg = self.cfg
        if cfg.calib_size < cfg.calib_batch:
            raise BadInputError(f"--calib-size {cfg.calib_size} is smaller than one batch ({cfg.calib_batch})")
        size = min(cfg.calib_size, limit or cfg.calib_size)
        if self._calib is None:
            self._calib = calibration_table(cfg.calib, self.table, cfg.calib_size, cfg.seed)
        table, source = self._calib
        available = min(size, len(table.indices("train")))
        if available < MIN_RECOMMENDED_SAMPLES and not self._warned:
            self._warned = True
            log.warning("calibrating on %d %s; %d or more give steadier INT8 ranges", available,
                        self.spec.samples, MIN_RECOMMENDED_SAMPLES)
        audit = CalibrationAudit(source=source)
        return calibration_batches(table, self.spec, size, min(cfg.calib_batch, size), cfg.seed, audit), audit

    def fp32_onnx(self) -> Path:
        """The checkpoint as ONNX: FP32, or for an INT8 checkpoint its QDQ graph (see __init__)."""
        if self._fp32_onnx is None:
            from edgekit.export.onnx_format import BakedPreprocess, export_fp32
            from edgekit.models.loading import load_model

            model = load_model(self.ckpt)
            if self.cfg.bake_preprocess:
                model = BakedPreprocess.wrap(model, self.ckpt.spec, self.cfg.input_color)
            path = self.work / "model.onnx"
            export_fp32(model, self.spec if self.int8_checkpoint else self.spec.replace(precision="fp32"), path,
                        self.cfg.dynamic_batch)
            self._fp32_onnx = path
        return self._fp32_onnx

    def int8_onnx(self) -> tuple[Path, dict]:
        if self._int8_onnx is None and self.cfg.onnx_int8 == "dynamic":
            from edgekit.export.onnx_format import quantize_dynamic_onnx

            path = self.work / "model_int8.onnx"
            self._int8_onnx = (path, quantize_dynamic_onnx(self.fp32_onnx(), path, keep_float=self.cfg.keep_float,
                                                           spec=self.spec.replace(precision="int8")))
        if self._int8_onnx is None:
            from edgekit.export.onnx_format import nncf_qdq, quantize_qdq

            cfg = self.cfg
            limit = None
            if cfg.onnx_int8 == "ort" and cfg.calib_method != "minmax":
                from edgekit.export.onnx_format import HISTOGRAM_BUDGET_MB, histogram_sample_cap

                limit = histogram_sample_cap(self.fp32_onnx())
                if limit < cfg.calib_size:
                    log.warning("--calib-method %s keeps every intermediate tensor of every image in memory: "
                                "calibrating on %d images to stay within %d MB (minmax has no such limit)",
                                cfg.calib_method, limit, HISTOGRAM_BUDGET_MB)
            batches, audit = self.calibration(limit)
            path = self.work / "model_int8.onnx"
            if cfg.onnx_int8 == "nncf":
                recipe = nncf_qdq(self.fp32_onnx(), path, batches, audit, num_samples=cfg.calib_size,
                                  bias_correction=cfg.onnx_bias_correction, keep_float=cfg.keep_float,
                                  target=cfg.target,
                                  spec=self.spec.replace(precision="int8"))
            else:
                recipe = quantize_qdq(self.fp32_onnx(), path, self.work, batches, audit,
                                      calib_method=cfg.calib_method, activation_type=cfg.activation_type,
                                      reduce_range=cfg.reduce_range, exclude=cfg.exclude, keep_float=cfg.keep_float,
                                      target=cfg.target,
                                      spec=self.spec.replace(precision="int8"))
            self._int8_onnx = (path, recipe)
        return self._int8_onnx


def data_source(cfg: ExportConfig, ckpt) -> str | None:
    if cfg.data:
        return cfg.data
    recorded = ckpt.metrics.get("config", {}).get("data")
    return recorded if recorded and Path(recorded).exists() else None


# --- the registry ----------------------------------------------------------------------------------
Exporter = Callable[[ExportJob], list[Artifact]]
EXPORTERS: dict[str, Exporter] = {}


def exporter(name: str) -> Callable[[Exporter], Exporter]:
    def register(fn: Exporter) -> Exporter:
        EXPORTERS[name] = fn
        return fn

    return register


def _finish(job: ExportJob, fmt: str, precision: str, path: Path, extra: list[Path], spec, notes: dict) -> Artifact:
    facts = {"format": fmt, "precision": precision, "source_checkpoint": str(Path(job.cfg.checkpoint).resolve()),
             **notes}
    sidecar = write_sidecar(path, spec, facts)
    now = time.perf_counter()
    seconds, job.clock = now - job.clock, now
    return Artifact(fmt, precision, path, spec, [path, *extra, sidecar], seconds, notes)


@exporter("onnx")
def export_onnx(job: ExportJob) -> list[Artifact]:
    from edgekit.export.onnx_format import IR_VERSION, MIN_ONNXRUNTIME, OPSET

    notes = {"opset": OPSET, "ir_version": IR_VERSION, "min_onnxruntime": MIN_ONNXRUNTIME}
    if job.int8_checkpoint:
        int8 = job.stage / "model_int8.onnx"
        shutil.copyfile(job.fp32_onnx(), int8)
        return [_finish(job, "onnx", "int8", int8, [], job.spec, {**notes, "scheme": "pytorch-int8-qdq"})]
    fp32 = job.stage / "model.onnx"
    shutil.copyfile(job.fp32_onnx(), fp32)
    out = [_finish(job, "onnx", "fp32", fp32, [], job.spec.replace(precision="fp32"), notes)]
    if job.cfg.int8:
        source, recipe = job.int8_onnx()
        int8 = job.stage / "model_int8.onnx"
        shutil.copyfile(source, int8)
        out.append(_finish(job, "onnx", "int8", int8, [], job.spec.replace(precision="int8", quantization=recipe),
                           notes))
    return out


@exporter("openvino")
def export_openvino(job: ExportJob) -> list[Artifact]:
    from edgekit.export import openvino_format as ovf

    out = []
    if job.int8_checkpoint:
        xml = job.stage / "model_int8.xml"
        notes = {"scheme": "from-pytorch-int8-qdq", **job.spec.quantization}
        files = ovf.from_onnx(job.fp32_onnx(), job.spec, xml)
        return [_finish(job, "openvino", "int8", xml, files[1:], job.spec, notes)]
    variants = [("fp32", "model.xml")] + ([("fp16", "model_fp16.xml")] if job.cfg.fp16 else []) + \
               ([("int8", "model_int8.xml")] if job.cfg.int8 else [])
    for precision, name in variants:
        xml = job.stage / name
        spec = job.spec.replace(precision=precision)
        notes = {}
        if precision == "int8" and job.cfg.ov_int8 == "nncf":
            batches, audit = job.calibration()
            files, kept = ovf.nncf_int8(job.fp32_onnx(), spec, xml, batches, job.cfg.calib_size,
                                        job.cfg.ov_bias_correction, job.cfg.keep_float, job.cfg.ov_max_drop,
                                        job.cfg.target)
            notes = {"scheme": "nncf-ptq" if job.cfg.ov_max_drop is None else "nncf-accuracy-control",
                     "target": job.cfg.target,
                     "bias_correction": job.cfg.ov_bias_correction, "keep_float": kept,
                     "calibration": audit.to_dict()}
            if job.cfg.ov_max_drop is not None:
                notes["max_agreement_drop"] = job.cfg.ov_max_drop
        elif precision == "int8":
            source, recipe = job.int8_onnx()
            notes = {"scheme": "from-onnx-qdq", **recipe}
            files = ovf.from_onnx(source, spec.replace(quantization=notes), xml)
        else:
            files = ovf.from_onnx(job.fp32_onnx(), spec, xml, fp16=precision == "fp16")
        spec = spec.replace(quantization=notes) if notes else spec
        out.append(_finish(job, "openvino", precision, xml, files[1:], spec, notes))
    return out


# --- the wrapper -----------------------------------------------------------------------------------
@dataclass
class ExportResult:
    artifacts: list[Artifact] = field(default_factory=list)  # written: verified (or verification off)
    lines: list[str] = field(default_factory=list)
    verify_table: str = ""
    verify_rows: list = field(default_factory=list)  # edgekit.export.verify.Row per model, reference first
    failed: list[str] = field(default_factory=list)  # "name: reason. Try: ..." for each artifact not written

    @property
    def verify_ok(self) -> bool:
        return not self.failed


# What to try when an artifact misses its gate, by precision (shown with the failure).
NEXT_STEPS = {
    "int8": "--keep-float depthwise (or first,last, or the nodes --debug-layers FILE shows losing most), "
            "`edgekit optimize` (tries the candidates against an accuracy budget), more or more varied "
            "calibration images (--calib DIR, --calib-size), or the other route (--onnx-int8 ort|nncf, "
            "--ov-int8 qdq|nncf)",
    "fp16": "keep the FP32 artifact (FP16 changes decisions on this model)",
    "fp32": "report it: an FP32 export should match PyTorch",
}


def _writable_dir(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot create output folder {out}: {exc.strerror}") from exc
    if not os.access(out, os.W_OK | os.X_OK):
        raise BadInputError(f"output folder {out} is not writable")
    return out


WORK_PREFIX = "edgekit-export-work-"  # in the temp dir; stage folders are in the output folder (STAGE_PREFIX)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's live process
    return True


def remove_stale_stages(out: Path) -> list[Path]:
    """Remove the stage folders (in ``out``) and work folders (in the temp dir) that an export killed before it
    could clean up left behind: recognised by the owner file, removed only when that process is gone. Their
    files were never verified, so nothing may pick them up."""
    removed = []
    for folder in [*out.glob(STAGE_PREFIX + "*"), *Path(tempfile.gettempdir()).glob(WORK_PREFIX + "*")]:
        owner = folder / OWNER_FILE
        try:
            pid = int(owner.read_text().strip())
        except (OSError, ValueError):
            continue  # not ours (or not readable): leave it
        if not _alive(pid):
            shutil.rmtree(folder, ignore_errors=True)
            removed.append(folder)
    if removed:
        log.info("removed %d folder(s) left by an interrupted export, e.g. %s", len(removed), removed[0])
    return removed


def export(cfg: ExportConfig) -> ExportResult:
    for name in cfg.formats:
        if name not in EXPORTERS:
            raise UnknownNameError("format", name, EXPORTERS)
    if not Path(cfg.checkpoint).is_file():
        raise BadInputError(f"checkpoint not found: {cfg.checkpoint}")
    out = _writable_dir(Path(cfg.out) if cfg.out else Path(cfg.checkpoint).parent)
    if cfg.debug_layers:
        checks.writable_file("--debug-layers", cfg.debug_layers)
    remove_stale_stages(out)
    stage = Path(tempfile.mkdtemp(prefix=STAGE_PREFIX, dir=out))
    work = None
    result = ExportResult()
    try:
        with writing(stage / OWNER_FILE):  # a full disk fails here already, inside the cleanup below
            (stage / OWNER_FILE).write_text(str(os.getpid()))
        work = Path(tempfile.mkdtemp(prefix=WORK_PREFIX))
        (work / OWNER_FILE).write_text(str(os.getpid()))
        job = ExportJob(cfg, stage, work)
        for name in cfg.formats:
            job.clock = time.perf_counter()
            result.artifacts += EXPORTERS[name](job)
        if cfg.debug_layers:
            result.lines.append(_debug_layers(job, Path(cfg.debug_layers)))
        if cfg.int8:
            from edgekit.export.onnx_format import target_note

            note = target_note(cfg.target)
            if note:
                result.lines.append(note)
        if cfg.verify:
            _verify_staged(cfg, job, result)
        for artifact in result.artifacts:  # the verified ones: move into place
            moved = []
            for f in artifact.files:
                os.replace(f, out / f.name)
                moved.append(out / f.name)
            artifact.files, artifact.path = moved, out / artifact.path.name
            result.lines.append(f"{artifact.label}: exported in {artifact.seconds:.1f} s -> {artifact.path} "
                                f"({artifact.size_bytes / 1e6:.1f} MB)")
    finally:
        shutil.rmtree(stage, ignore_errors=True)
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
    return result


DEBUG_IMAGES = 64  # calibration images run through both models for --debug-layers


def _debug_layers(job: ExportJob, path: Path) -> str:
    from edgekit.export.int8_debug import layer_errors, write_rows
    from edgekit.export.onnx_format import INPUT_NAME

    int8_path, _ = job.int8_onnx()
    batches, _ = job.calibration(DEBUG_IMAGES)
    images = [image[None] for batch in batches for image in batch][:DEBUG_IMAGES]
    rows = layer_errors(job.fp32_onnx(), int8_path, images, INPUT_NAME)
    write_rows(rows, path)
    measured = [r for r in rows if r["accumulated_sqnr_db"] is not None]
    worst = min(measured, key=lambda r: r["accumulated_sqnr_db"], default=None)
    where = f"; lowest accumulated SQNR {worst['accumulated_sqnr_db']:.1f} dB at {worst['tensor']}" if worst else ""
    return f"per-layer INT8 error ({len(rows)} quantized tensors, {len(images)} calibration images) -> {path}{where}"


def _verify_staged(cfg: ExportConfig, job: ExportJob, result: ExportResult) -> None:
    """Verify every staged artifact; the ones that miss their gate are dropped from ``result.artifacts``
    (their files stay in the stage folder, which is removed) and listed in ``result.failed``. One failed
    artifact never costs the others: each passed or failed on its own numbers."""
    from edgekit.export.verify import failures, verify

    data = data_source(cfg, job.ckpt)
    if data is None:
        log.warning("verification skipped: no data to verify on (pass --data)")
        result.verify_table = "verification skipped: no data"
        return
    rows, table = verify([a.path for a in result.artifacts], Path(cfg.checkpoint), data, cfg.verify_images, cfg.seed)
    result.verify_table, result.verify_rows = table, rows
    failed = {r.name: r for r in failures(rows)}
    for artifact in [a for a in result.artifacts if a.path.name in failed]:
        row = failed[artifact.path.name]
        result.failed.append(f"{artifact.path.name} not written: {'; '.join(row.problems)}. "
                             f"Try: {NEXT_STEPS[artifact.precision]}")
        result.artifacts.remove(artifact)
