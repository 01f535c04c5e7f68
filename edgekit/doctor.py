"""`edgekit doctor`: is this machine ready to run this model, and what should one expect from INT8 here?

Each check is a row (ok / warn / fail / info) with a one-line detail; any ``fail`` makes the exit code 1,
so scripts can gate a deployment on it. torch is never imported: the doctor runs on a device that only has
onnxruntime.
"""
from __future__ import annotations

import os
import platform
import struct
from dataclasses import asdict, dataclass
from importlib import metadata
from pathlib import Path

from edgekit.core.hardware import cpu_flags, is_arm

# ARM "CPU part" codes (/proc/cpuinfo) of the cores found in Raspberry Pis and similar boards.
ARM_CORES = {"0xd03": "Cortex-A53", "0xd04": "Cortex-A35", "0xd05": "Cortex-A55", "0xd07": "Cortex-A57",
             "0xd08": "Cortex-A72", "0xd09": "Cortex-A73", "0xd0a": "Cortex-A75", "0xd0b": "Cortex-A76",
             "0xd0d": "Cortex-A77", "0xd41": "Cortex-A78", "0xd44": "Cortex-X1"}
MIN_FREE_MB = 300


@dataclass
class Check:
    name: str
    status: str  # ok, warn, fail, info
    detail: str


def _cpuinfo_field(*keys: str) -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() in keys:
                return value.strip()
    except OSError:
        return None
    return None


def int8_advice(flags: frozenset[str], arm: bool, core: str | None = None) -> Check:
    """What the instruction set means for INT8 speed (docs/architecture.md, "Measuring")."""
    if arm:
        name = core or "this ARM core"
        if "i8mm" in flags:
            return Check("int8", "ok", f"{name} has dot-product and i8mm: INT8 should clearly beat FP32")
        if "asimddp" in flags:
            return Check("int8", "ok", f"{name} has the dot-product instructions: INT8 should beat FP32")
        return Check("int8", "warn", f"{name} without dot-product: INT8 may not beat FP32; benchmark both "
                                     f"(edgekit bench model.onnx model_int8.onnx)")
    if flags & {"amx_int8"}:
        return Check("int8", "ok", "x86 with AMX and VNNI: INT8 much faster than FP32")
    if flags & {"avx512_vnni", "avx_vnni"}:
        return Check("int8", "ok", "x86 with VNNI: INT8 faster than FP32, full 8-bit activations")
    if "avx2" in flags:
        return Check("int8", "warn", "x86 with AVX2 but no VNNI: INT8 gains are modest; edgekit export uses 7-bit "
                                     "activations (reduce_range) here; benchmark both")
    return Check("int8", "warn", "no AVX2/VNNI or ARM dot-product found: INT8 may be slower than FP32")


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def _free_mb() -> float | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _camera_stack() -> Check | None:
    """On a Raspberry Pi, which camera stack there is and which --source reads it."""
    from edgekit.edge_apps.picamera import available

    model = Path("/proc/device-tree/model")
    pi = model.is_file() and "raspberry pi" in model.read_bytes().decode(errors="replace").lower()
    if available():
        return Check("camera stack", "ok", "Picamera2 (libcamera) is installed: a camera module reads with "
                                           "--source picamera2 (USB cameras with --source 0)")
    if pi:
        return Check("camera stack", "warn", "Raspberry Pi without Picamera2: a camera module (libcamera) usually "
                                             "gives OpenCV no frames; sudo apt install python3-picamera2, make the "
                                             "venv with --system-site-packages, then --source picamera2")
    return None


def _camera(index: int) -> Check:
    devices = sorted(str(p) for p in Path("/dev").glob("video*")) if Path("/dev").is_dir() else []
    if not devices:
        return Check("camera", "warn", "no /dev/video* device: use a video file or URL as --source")
    import cv2

    capture = cv2.VideoCapture(index)
    try:
        ok = capture.isOpened() and capture.read()[0]
    finally:
        capture.release()
    return Check("camera", "ok" if ok else "warn",
                 f"camera {index} delivers frames" if ok else f"{', '.join(devices)} present but camera {index} gives no frames")


def _model(path: str, runtime: str | None) -> list[Check]:
    import time

    import numpy as np

    from edgekit.core.errors import EdgekitError
    from edgekit.runtimes.base import load_runtime

    try:
        start = time.perf_counter()
        rt = load_runtime(path, runtime)
        load_s = time.perf_counter() - start
        spec = rt.spec
        start = time.perf_counter()
        rt.infer(np.zeros(spec.input_shape(), np.dtype(spec.dtype)))
        first_ms = (time.perf_counter() - start) * 1e3
        info = rt.describe()
        rt.close()
    except EdgekitError as exc:
        return [Check("model", "fail", str(exc))]
    return [Check("model", "ok", f"{Path(path).name} ({spec.precision}, {spec.arch}, {spec.input_size[1]}x{spec.input_size[0]}) loads in "
                                 f"{info['runtime']} {info['version']} in {load_s:.2f} s; first inference "
                                 f"{first_ms:.1f} ms")]


def run_checks(model: str | None = None, runtime: str | None = None, camera: int | None = 0) -> list[Check]:
    """Every check, in order; ``camera=None`` skips the camera probe (a rollout's health check, while the
    camera app may hold the camera)."""
    bits = struct.calcsize("P") * 8
    machine = platform.machine()
    checks = [Check("platform", "ok" if bits == 64 else "warn",
                    f"{platform.system()} {platform.release()}, {machine}, {bits}-bit Python {platform.python_version()}"
                    + ("" if bits == 64 else "; onnxruntime publishes no 32-bit ARM wheels: use a 64-bit OS"))]
    arm = is_arm()
    core = ARM_CORES.get((_cpuinfo_field("CPU part") or "").lower()) if arm else None
    cpu = _cpuinfo_field("model name", "Model") or core or platform.processor() or machine
    checks.append(Check("cpu", "info", f"{cpu}, {os.cpu_count()} logical cores"))
    checks.append(int8_advice(cpu_flags(), arm, core))
    versions = {p: _version(p) for p in ("onnxruntime", "openvino", "torch")}
    installed = [f"{p} {v}" for p, v in versions.items() if v]
    checks.append(Check("runtimes", "ok" if installed else "fail",
                        ", ".join(installed) if installed else 'no runtime installed: pip install "edgekit[onnx]"'))
    free = _free_mb()
    if free is not None:
        checks.append(Check("memory", "ok" if free >= MIN_FREE_MB else "warn", f"{free:.0f} MB available"))
    if camera is not None:
        checks.append(_camera(camera))
    stack = _camera_stack()
    if stack is not None:
        checks.append(stack)
    if model:
        checks.extend(_model(model, runtime))
    return checks


def format_checks(checks: list[Check]) -> str:
    return "\n".join(f"{c.status.upper():<5} {c.name:<9} {c.detail}" for c in checks)


def to_json(checks: list[Check]) -> list[dict]:
    return [asdict(c) for c in checks]
