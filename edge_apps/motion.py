"""`edgekit dataset clips`: the temporal benchmark, labelled videos in which a real image moves.

No labelled driver video installs offline here, so the clip models are measured on a task built from real
images whose label is a *motion*, not the image: each video shows one real Fashion-MNIST (or MNIST, or any
IDX) image on a dark, noisy canvas, moving along one of MOTIONS (a straight move in one of four directions,
a rotation either way, a zoom in or out) from a random start position, angle and scale at a random speed.
Any single frame is equally likely under every motion (the start is uniform), so a model that looks at one
frame is at chance (1/8) and a clip model has to use time. The object images themselves are real data; the
motion is synthetic, and the results say so.

The output is in both of edgekit's clip layouts, so it exercises the same loading path as real labelled
video: ``out/<motion>/<n>.avi`` (MJPG) and ``out/segments.csv`` (``video, start, end, label, subject``; the
subject is the source image, so a split by subject keeps an object's clips on one side).
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgekit.core import checks
from edgekit.core.errors import BadInputError

MOTIONS = ("right", "left", "down", "up", "rotate_cw", "rotate_ccw", "zoom_in", "zoom_out")
EMBEDDED = Path(__file__).resolve().parents[1] / "edgekit" / "data" / "fashion-mnist-mini"


@dataclass(frozen=True)
class MotionClipsConfig:
    out: str
    source: str = ""  # an IDX folder (train-images-idx3-ubyte[.gz]); "" = the embedded Fashion-MNIST subset
    per_class: int = 100  # videos per motion
    frames: int = 16
    size: int = 64  # canvas side in pixels; the object is about 0.45 of it
    clips_per_object: int = 2  # each source image appears in this many videos (with different motions)
    fps: float = 15.0
    seed: int = 0

    def __post_init__(self) -> None:
        checks.within("--per-class", self.per_class, 1, 100_000)
        checks.within("--frames", self.frames, 2, 256)
        checks.within("--size", self.size, 32, 512)
        checks.within("--clips-per-object", self.clips_per_object, 1, len(MOTIONS))
        checks.within("--fps", self.fps, 1, 120)


def _objects(cfg: MotionClipsConfig, count: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """``count`` distinct source images (grey, uint8) and their indices in the source."""
    from edgekit.core.data import _find_idx, read_idx

    folder = Path(cfg.source) if cfg.source else EMBEDDED
    path = _find_idx(folder, "train", "images") if folder.is_dir() else None
    if path is None:
        raise BadInputError(f"--source {folder}: no train-images IDX file there")
    images = read_idx(path)
    if images.ndim != 3:
        raise BadInputError(f"{path}: expected N x H x W images, got shape {images.shape}")
    if count > len(images):
        raise BadInputError(f"{count} objects needed ({cfg.per_class} x {len(MOTIONS)} videos / "
                            f"{cfg.clips_per_object} per object), {path} has {len(images)} images")
    chosen = np.sort(rng.choice(len(images), count, replace=False))
    return images[chosen], chosen


def render(obj: np.ndarray, motion: str, frames: int, size: int, rng: np.random.Generator) -> list[np.ndarray]:
    """The frames (size x size x 3 uint8, BGR) of ``obj`` moving along ``motion``. Position, angle and scale of
    the middle frame are drawn from the same ranges for every motion, so one frame does not give the label away."""
    import cv2

    side = max(8, round(0.45 * size))
    base = cv2.resize(obj, (side, side), interpolation=cv2.INTER_AREA).astype(np.float32)
    speed = rng.uniform(0.5, 1.0)
    scale_mid, angle_mid = rng.uniform(0.8, 1.0), rng.uniform(0, 360)
    travel = 0.6 * (size - side) * speed  # pixels over the clip (straight moves)
    turn = 150.0 * speed  # degrees over the clip (rotations)
    zoom = 1.0 + 0.8 * speed  # scale ratio over the clip (zooms)
    reach = side * scale_mid * (zoom ** 0.5) / 2 + travel / 2  # the farthest the object gets from its middle
    x_mid, y_mid = (rng.uniform(reach, size - reach) if reach < size / 2 else size / 2 for _ in range(2))
    direction = {"right": (1, 0), "left": (-1, 0), "down": (0, 1), "up": (0, -1)}.get(motion, (0, 0))
    spin = {"rotate_cw": -1, "rotate_ccw": 1}.get(motion, 0)
    grow = {"zoom_in": 1, "zoom_out": -1}.get(motion, 0)
    out = []
    for i in range(frames):
        t = i / (frames - 1) - 0.5  # -0.5 .. 0.5, the middle frame at 0
        x, y = x_mid + direction[0] * travel * t, y_mid + direction[1] * travel * t
        matrix = cv2.getRotationMatrix2D((side / 2, side / 2), angle_mid + spin * turn * t,
                                         scale_mid * zoom ** (grow * t))
        matrix[:, 2] += (x - side / 2, y - side / 2)
        canvas = cv2.warpAffine(base, matrix, (size, size), flags=cv2.INTER_LINEAR, borderValue=0)
        canvas += rng.normal(12, 6, canvas.shape).astype(np.float32)  # sensor-like noise, new every frame
        grey = np.clip(canvas, 0, 255).astype(np.uint8)
        out.append(cv2.cvtColor(grey, cv2.COLOR_GRAY2BGR))
    return out


def write_video(path: Path, frames: list[np.ndarray], fps: float) -> None:
    import cv2

    height, width = frames[0].shape[:2]
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), fps, (width, height))
    if not writer.isOpened():
        raise BadInputError(f"cannot write video {path} (no MJPG encoder in this OpenCV?)")
    try:
        for frame in frames:
            writer.write(frame)
    finally:
        writer.release()


def build_motion_clips(cfg: MotionClipsConfig, progress=lambda items: items) -> dict:
    """Write the videos and segments.csv into ``cfg.out`` (staged, then moved: an interrupted run leaves no
    half data set). Returns a summary."""
    out = Path(cfg.out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise BadInputError(f"--out {out} exists and is not an empty folder")
    rng = np.random.default_rng(cfg.seed)
    total = cfg.per_class * len(MOTIONS)
    count = -(-total // cfg.clips_per_object)
    objects, source_ids = _objects(cfg, count, rng)
    # each object gets clips_per_object different motions; the motions are dealt so every class has per_class
    jobs = [(k % len(MOTIONS), k // cfg.clips_per_object) for k in range(total)]
    try:
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".edgekit-clips-", dir=out))
    except OSError as exc:
        raise BadInputError(f"cannot write to {out}: {exc.strerror}") from None
    try:
        rows = []
        for motion in MOTIONS:
            (stage / motion).mkdir()
        for number, (label, obj) in enumerate(progress(jobs)):
            motion = MOTIONS[label]
            name = f"{motion}/{number:06d}.avi"
            write_video(stage / name, render(objects[obj], motion, cfg.frames, cfg.size, rng), cfg.fps)
            rows.append({"video": name, "start": 0, "end": cfg.frames, "label": motion,
                         "subject": f"object{int(source_ids[obj])}"})
        with open(stage / "segments.csv", "w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=["video", "start", "end", "label", "subject"])
            writer.writeheader()
            writer.writerows(rows)
        for motion in MOTIONS:
            os.replace(stage / motion, out / motion)
        os.replace(stage / "segments.csv", out / "segments.csv")
    except OSError as exc:
        raise BadInputError(f"cannot write to {out}: {exc.strerror}") from None
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return {"videos": total, "objects": count, "motions": list(MOTIONS), "frames": cfg.frames, "size": cfg.size,
            "source": str(Path(cfg.source) if cfg.source else EMBEDDED)}
