"""Shared fixtures: small real data sets written to disk once per session, and one tiny trained model.

Everything is 32x32 or smaller so the whole suite runs in minutes on two CPU cores.
"""
from __future__ import annotations

import contextlib
import gzip
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]


def write_idx(path: Path, array: np.ndarray) -> Path:
    """Write a uint8 array in the IDX format (gzipped when the name ends in .gz)."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    payload = header + np.ascontiguousarray(array, np.uint8).tobytes()
    path.write_bytes(gzip.compress(payload) if path.suffix == ".gz" else payload)
    return path


def blob_image(label: int, rng: np.random.Generator, size: int = 32) -> np.ndarray:
    """A synthetic BGR test image whose class is visible: a bright square in one of four places."""
    image = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    y, x = divmod(label % 4, 2)
    half = size // 2
    image[y * half:(y + 1) * half, x * half:(x + 1) * half] = 220
    return image


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def default_sigint() -> None:
    """``preexec_fn`` for a child that a test will interrupt: SIGINT back to its default disposition.

    When the test run itself was started as a background job, the shell set SIGINT to "ignore", and a child
    inherits that; a SIGINT sent to it would then be lost whatever the child does about it."""
    import signal

    signal.signal(signal.SIGINT, signal.SIG_DFL)


@contextlib.contextmanager
def full_disk_folder(mount: Path, size: str):
    """Yield (folder, reason): an empty folder on a tmpfs of ``size`` filled to the last byte, where every
    write fails with ENOSPC as on a full SD card; or (None, why not) where a tmpfs cannot be mounted (it
    needs root). Unmounted afterwards."""
    import os
    import shutil

    mount.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        yield None, "mounting a tmpfs needs root"
        return
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True,
                          text=True)
    if proc.returncode != 0:
        yield None, f"cannot mount a tmpfs here: {proc.stderr.strip()}"
        return
    try:
        (mount / "out").mkdir()  # an output folder that exists, on a disk with no room left
        with open(mount / "filler", "wb", buffering=0) as filler:
            try:
                while True:
                    filler.write(b"\0" * 4096)
            except OSError:
                pass
        yield mount / "out", ""
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def run_cli(*args: str, cwd: Path | None = None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Run the real `edgekit` entry point in a fresh interpreter."""
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True,
                          cwd=cwd, timeout=timeout)


def run_cli_without(module: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run the `edgekit` CLI in a fresh interpreter in which importing ``module`` fails (as on a device
    where it is not installed)."""
    code = (f"import sys; sys.modules[{module!r}] = None\n"
            "from edgekit.cli import main\n"
            f"sys.argv = ['edgekit', *{list(args)!r}]\n"
            "main()\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=timeout)


@pytest.fixture(scope="session")
def image_folder(tmp_path_factory) -> Path:
    """root/<class>/*.png with three classes of synthetic images."""
    import cv2

    root = tmp_path_factory.mktemp("folder")
    rng = np.random.default_rng(0)
    for label, name in enumerate(("cat", "dog", "owl")):
        (root / name).mkdir()
        for i in range(20):
            cv2.imwrite(str(root / name / f"{i:03d}.png"), blob_image(label, rng))
    return root


@pytest.fixture(scope="session")
def mini_data() -> Path:
    """The real Fashion-MNIST subset that ships inside the package."""
    from edgekit.training.demo import embedded_dataset

    return embedded_dataset()


@pytest.fixture(scope="session")
def trained(tmp_path_factory, mini_data) -> dict:
    """MobileNetV2 trained for one short epoch on 300 embedded images at 32x32."""
    from edgekit.training.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("train")
    return train(TrainConfig(data=str(mini_data), model="mobilenet_v2", weights="none", input_size=32,
                             epochs=1, batch_size=32, limit=300, out=str(out), threads=2))


@pytest.fixture(scope="session")
def quantized(trained, mini_data, tmp_path_factory) -> dict:
    from edgekit.training.quantize import QuantizeConfig, quantize_checkpoint

    out = tmp_path_factory.mktemp("int8") / "model_int8.pt"
    return quantize_checkpoint(QuantizeConfig(checkpoint=str(trained["checkpoint"]), data=str(mini_data),
                                              calib_batches=4, batch_size=16, limit_test=64, out=str(out),
                                              threads=2))


@pytest.fixture(scope="session")
def exported(trained, mini_data, tmp_path_factory):
    """ONNX FP32/INT8 and OpenVINO FP32/FP16/INT8 of the tiny model, verified; (folder, ExportResult)."""
    from edgekit.export.core import ExportConfig, export

    out = tmp_path_factory.mktemp("export")
    result = export(ExportConfig(checkpoint=str(trained["checkpoint"]), formats=("onnx", "openvino"), out=str(out),
                                 int8=True, fp16=True, data=str(mini_data), calib_size=64, calib_batch=16,
                                 verify_images=200))
    return out, result


MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")  # Debian opencv-doc


def draw_face(image: np.ndarray, cx: int, cy: int, r: int) -> np.ndarray:
    """A drawn frontal face (skin oval, brows, open eyes, nose, mouth) that OpenCV's Haar cascade detects."""
    import cv2

    cv2.ellipse(image, (cx, cy), (int(r * 0.8), r), 0, 0, 360, (150, 180, 220), -1)
    for side in (-1, 1):
        ex, ey = cx + side * int(r * 0.35), cy - int(r * 0.2)
        cv2.ellipse(image, (ex, ey - int(r * 0.18)), (int(r * 0.22), int(r * 0.05)), 0, 0, 360, (40, 40, 60), -1)
        cv2.ellipse(image, (ex, ey), (int(r * 0.16), int(r * 0.09)), 0, 0, 360, (255, 255, 255), -1)
        cv2.circle(image, (ex, ey), int(r * 0.07), (30, 20, 20), -1)
    cv2.line(image, (cx, cy - int(r * 0.05)), (cx, cy + int(r * 0.25)), (110, 140, 190), 3)
    cv2.ellipse(image, (cx, cy + int(r * 0.45)), (int(r * 0.3), int(r * 0.08)), 0, 0, 360, (60, 60, 150), -1)
    return cv2.GaussianBlur(image, (5, 5), 0)


@pytest.fixture(scope="session")
def faces_video(tmp_path_factory) -> Path:
    """Real video with faces: Megamind.avi from Debian's opencv-doc when installed (tools/system-packages.sh
    installs it), else a generated 640x480 clip of a drawn face moving across the frame."""
    if MEGAMIND.is_file():
        return MEGAMIND
    import cv2

    path = tmp_path_factory.mktemp("faces") / "faces.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 24, (640, 480))
    for i in range(60):
        writer.write(draw_face(np.full((480, 640, 3), 90, np.uint8), 220 + 4 * i, 240, 120))
    writer.release()
    return path


@pytest.fixture(scope="session")
def binary_models(tmp_path_factory) -> dict:
    """A tiny one-logit attentive / not_attentive classifier (synthetic images; the apps' mechanics only) as
    PyTorch checkpoint, ONNX and OpenVINO IR: {"pytorch": path, "onnxruntime": path, "openvino": path}."""
    import cv2

    from edgekit.export.core import ExportConfig, export
    from edgekit.training.trainer import TrainConfig, train

    root = tmp_path_factory.mktemp("binary")
    rng = np.random.default_rng(1)
    for label, name in enumerate(("attentive", "not_attentive")):
        (root / "data" / name).mkdir(parents=True)
        for i in range(24):
            cv2.imwrite(str(root / "data" / name / f"{i:03d}.png"), blob_image(label, rng))
    result = train(TrainConfig(data=str(root / "data"), weights="none", input_size=32, epochs=1, batch_size=16,
                               out=str(root / "model"), threads=2))
    export(ExportConfig(checkpoint=str(result["checkpoint"]), formats=("onnx", "openvino"), verify_images=16))
    model = Path(result["checkpoint"])
    return {"pytorch": model, "onnxruntime": model.with_suffix(".onnx"), "openvino": model.with_suffix(".xml")}


@pytest.fixture(scope="session")
def clip(tmp_path_factory):
    """A 40-frame MJPG clip: a bright block moving over a dark noisy background."""
    import cv2

    path = tmp_path_factory.mktemp("clip") / "clip.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20, (96, 64))
    rng = np.random.default_rng(0)
    for i in range(40):
        image = rng.integers(0, 40, (64, 96, 3), dtype=np.uint8)
        image[16:48, i:i + 32] = 210
        writer.write(image)
    writer.release()
    return path


@pytest.fixture(scope="session")
def motion_clips(tmp_path_factory):
    """The temporal benchmark in miniature: 4 videos per motion, 8 frames of 32x32 (edgekit dataset clips)."""
    from edgekit.edge_apps.motion import MotionClipsConfig, build_motion_clips

    out = tmp_path_factory.mktemp("motion") / "clips"
    build_motion_clips(MotionClipsConfig(out=str(out), per_class=4, frames=8, size=32))
    return out


@pytest.fixture(scope="session")
def clip_model(motion_clips, tmp_path_factory):
    """mobilenet3d_x0_5 trained one short epoch on the tiny motion set: 4 frames, every 2nd, 32x32."""
    from edgekit.training.trainer import TrainConfig, train

    out = tmp_path_factory.mktemp("clip_train")
    result = train(TrainConfig(data=str(motion_clips / "segments.csv"), model="mobilenet3d_x0_5", weights="none",
                               input_size=32, clip_frames=4, frame_stride=2, epochs=1, batch_size=8, out=str(out),
                               threads=2))
    return result["checkpoint"]


@pytest.fixture(scope="session")
def clip_exported(clip_model, motion_clips, tmp_path_factory):
    """FP32 ONNX + OpenVINO of the clip model, and QDQ ONNX + OpenVINO of its PyTorch INT8 (static) checkpoint."""
    from edgekit.export.core import ExportConfig, export
    from edgekit.training.quantize import QuantizeConfig, quantize_checkpoint

    out = tmp_path_factory.mktemp("clip_export")
    data = str(motion_clips / "segments.csv")
    fp32 = export(ExportConfig(checkpoint=str(clip_model), formats=("onnx", "openvino"), out=str(out / "fp32"),
                               data=data))
    quantized = quantize_checkpoint(QuantizeConfig(checkpoint=str(clip_model), data=data, calib_batches=2,
                                                   batch_size=8, out=str(out / "model_int8.pt"), threads=2))
    int8 = export(ExportConfig(checkpoint=str(out / "model_int8.pt"), formats=("onnx", "openvino"),
                               out=str(out / "int8"), data=data))
    return out, fp32, quantized, int8
