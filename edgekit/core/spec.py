"""The model spec: the single source of truth for what a model expects and what it outputs.

A :class:`ModelSpec` travels with every checkpoint (and later every exported artifact). Training,
evaluation, calibration and deployment all build their preprocessing from it through
:func:`preprocess`, so the numbers a model sees on a Raspberry Pi are the numbers it saw in training.
Preprocessing mismatch is the most common silent bug in edge deployment; this module exists to make it
impossible by construction.

Only numpy (and OpenCV for resizing) is needed here: a device with nothing but onnxruntime can read a spec.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from edgekit.core.errors import BadInputError

SPEC_FORMAT = "edgekit-spec/1"
COLORS = ("RGB", "BGR", "GRAY")
TASKS = ("image", "clip")
PRECISIONS = ("fp32", "fp16", "int8")
RESIZE_MODES = ("squash", "letterbox", "crop")
LETTERBOX_PAD = 114  # grey bars, as YOLO-style letterboxing pads
CROP_FRACTION = 0.875  # torchvision's ImageNet evaluation: resize the shorter side to 256, center-crop 224

# Fashion-MNIST's class names, in label order (https://github.com/zalandoresearch/fashion-mnist, MIT).
FASHION_MNIST_LABELS = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)


@dataclass(frozen=True)
class ModelSpec:
    """What the network takes and gives.

    ``color`` is the colour order the *network* expects; ``channels`` how many planes it takes (a
    grayscale source fed to an ImageNet backbone is replicated to 3 planes). Pixel values are first
    scaled by ``scale`` (1/255 maps uint8 to [0, 1]) and then normalised per channel with ``mean``/``std``.
    ``dtype="uint8"`` marks an exported graph that does that scaling and normalisation itself: the
    caller only resizes and orders the colours (``preprocess`` then returns uint8).
    """

    arch: str
    labels: tuple[str, ...]
    input_size: tuple[int, int] = (32, 32)  # (height, width)
    channels: int = 3
    color: str = "RGB"
    layout: str = "NCHW"
    dtype: str = "float32"
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    task: str = "image"
    binary: bool = False  # one logit (sigmoid) instead of one per class (softmax)
    precision: str = "fp32"
    quantization: dict[str, Any] = field(default_factory=dict)
    source_checkpoint_sha256: str = ""
    versions: dict[str, str] = field(default_factory=dict)
    split: dict[str, Any] = field(default_factory=dict)  # the training split recipe (edgekit.core.data.SPLIT_KEYS)
    # Two-class models: the label binary metrics, pos_weight and the apps' scores are about. `edgekit train`
    # orders the labels so that it is the second one (the class a one-logit model's sigmoid gives).
    positive: str = ""
    # How an image of another size becomes input_size (see fit_to_input): squash, letterbox or crop; for crop
    # the shorter side is first resized to resize_to (0: input size / 0.875, i.e. 256 for 224).
    resize: str = "squash"
    resize_to: int = 0
    # task "clip": the network classifies a clip of clip_frames frames (layout NCTHW), taken every frame_stride-th
    # frame of the source; 0 and 1 for single images.
    clip_frames: int = 0
    frame_stride: int = 1

    def __post_init__(self) -> None:
        # Frozen dataclasses cannot assign normally; normalise list-valued JSON input to tuples.
        for name in ("labels", "input_size", "mean", "std"):
            object.__setattr__(self, name, tuple(getattr(self, name)))
        problems = []
        if self.color not in COLORS:
            problems.append(f"color must be one of {COLORS}, got {self.color!r}")
        if self.task not in TASKS:
            problems.append(f"task must be one of {TASKS}, got {self.task!r}")
        if self.precision not in PRECISIONS:
            problems.append(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.dtype not in ("float32", "uint8"):
            problems.append(f"dtype must be float32 or uint8 (preprocessing inside the graph), got {self.dtype!r}")
        if self.resize not in RESIZE_MODES:
            problems.append(f"resize must be one of {RESIZE_MODES}, got {self.resize!r}")
        if self.resize_to and (self.resize != "crop" or self.resize_to < max(self.input_size)):
            problems.append(f"resize_to is for resize='crop' and must be >= the input size, got {self.resize_to}")
        if self.task == "clip":
            if not 2 <= self.clip_frames <= 256 or not 1 <= self.frame_stride <= 64:
                problems.append(f"a clip model needs 2-256 clip_frames and a frame_stride of 1-64, got "
                                f"{self.clip_frames} and {self.frame_stride}")
            if self.layout != "NCTHW" or self.dtype != "float32":
                problems.append(f"a clip model takes float32 NCTHW clips, got {self.dtype} {self.layout}")
        elif self.clip_frames or self.frame_stride != 1:
            problems.append("clip_frames and frame_stride are for task 'clip'")
        elif self.layout not in ("NCHW", "NHWC"):
            problems.append(f"layout must be NCHW or NHWC, got {self.layout!r}")
        if len(self.input_size) != 2 or min(self.input_size) < 1:
            problems.append(f"input_size must be (height, width) > 0, got {self.input_size}")
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, got {self.channels}")
        if len(self.mean) != self.channels or len(self.std) != self.channels:
            problems.append(f"mean/std need {self.channels} values each")
        if not all(math.isfinite(v) for v in (*self.mean, *self.std, self.scale)):
            problems.append("mean, std and scale must be finite numbers (no NaN or infinity)")
        elif any(s <= 0 for s in self.std) or self.scale <= 0:
            problems.append("std values and scale must be > 0")
        if max(self.input_size, default=0) > 8192:
            problems.append(f"input_size {self.input_size} is larger than 8192 pixels a side")
        if len(self.labels) < 2:
            problems.append("a classifier needs at least 2 labels")
        if self.binary and len(self.labels) != 2:
            problems.append("binary=True needs exactly 2 labels")
        if self.positive and (len(self.labels) != 2 or self.positive != self.labels[-1]):
            problems.append(f"positive must be the second of 2 labels, got {self.positive!r} for {list(self.labels)[:4]}")
        if problems:
            raise BadInputError("invalid model spec: " + "; ".join(problems))

    @property
    def positive_label(self) -> str | None:
        """The positive class of a two-class model (recorded, else the second label); None otherwise."""
        return (self.positive or self.labels[1]) if len(self.labels) == 2 else None

    @property
    def samples(self) -> str:
        """What one input is called in messages: "clips" for clip models, else "images"."""
        return "clips" if self.task == "clip" else "images"

    @property
    def num_outputs(self) -> int:
        return 1 if self.binary else len(self.labels)

    def input_shape(self, batch: int = 1) -> tuple[int, ...]:
        """The shape of a batch the network takes: (N, C, H, W), (N, H, W, C) or, for clips, (N, C, T, H, W)."""
        height, width = self.input_size
        if self.layout == "NCTHW":
            return (batch, self.channels, self.clip_frames, height, width)
        if self.layout == "NCHW":
            return (batch, self.channels, height, width)
        return (batch, height, width, self.channels)

    def replace(self, **changes: Any) -> "ModelSpec":
        return dataclasses.replace(self, **changes)

    # --- serialisation: plain JSON so that any device can read it with the standard library ---------
    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["format"] = SPEC_FORMAT
        for name in ("labels", "input_size", "mean", "std"):
            data[name] = list(data[name])
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelSpec":
        if not isinstance(data, dict):
            raise BadInputError(f"model spec must be a JSON object, got {type(data).__name__}")
        data = dict(data)
        fmt = data.pop("format", SPEC_FORMAT)
        if fmt != SPEC_FORMAT:
            raise BadInputError(f"unsupported spec format {fmt!r} (this edgekit reads {SPEC_FORMAT})")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise BadInputError(f"model spec has unknown fields: {', '.join(unknown)}")
        try:
            return cls(**data)
        except TypeError as exc:  # missing required fields
            raise BadInputError(f"incomplete model spec: {exc}") from exc

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> "ModelSpec":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise BadInputError(f"model spec is not valid JSON: {exc}") from exc
        return cls.from_dict(data)

    def save(self, path: str | Path) -> Path:
        path = Path(path)
        path.write_text(self.to_json() + "\n", encoding="utf-8")
        return path

    @classmethod
    def load(cls, path: str | Path) -> "ModelSpec":
        path = Path(path)
        if not path.is_file():
            raise BadInputError(f"spec file not found: {path}")
        return cls.from_json(path.read_text(encoding="utf-8"))


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(chunk), b""):
            digest.update(block)
    return digest.hexdigest()


def _convert_color(image: np.ndarray, source: str, target: str) -> np.ndarray:
    """Convert an HxW or HxWx3 uint8 image from ``source`` colour order to ``target`` (HxWxC)."""
    if image.ndim == 2:
        image = image[:, :, None]
    if source == "GRAY" or image.shape[2] == 1:
        gray = image[:, :, :1]
        return gray if target == "GRAY" else np.repeat(gray, 3, axis=2)
    if target == "GRAY":
        # ITU-R BT.601 luma, the weights OpenCV's cvtColor uses.
        rgb = image if source == "RGB" else image[:, :, ::-1]
        luma = rgb.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32)
        return np.clip(luma + 0.5, 0, 255).astype(np.uint8)[:, :, None]
    return image if source == target else image[:, :, ::-1]


def preprocess(image: np.ndarray, spec: ModelSpec, source_color: str = "BGR") -> np.ndarray:
    """Turn one uint8 image (HxW or HxWxC, as decoded) into the float32 tensor the network takes.

    Returns CHW (or HWC for ``layout="NHWC"``) without the batch axis. ``source_color`` is the order
    of ``image``: OpenCV decodes BGR, IDX files are GRAY.
    """
    if image.dtype != np.uint8:
        raise BadInputError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim not in (2, 3) or (image.ndim == 3 and image.shape[2] not in (1, 3)):
        raise BadInputError(f"expected an HxW or HxWx3 image, got shape {image.shape}")
    target = "GRAY" if spec.channels == 1 else ("BGR" if spec.color == "BGR" else "RGB")
    baked = spec.dtype == "uint8"  # the graph casts and normalises itself (export --bake-preprocess)
    # Resize (or crop) before the colour conversion: a channel swap commutes with the per-channel resize, and
    # on a 640x480 camera frame converting first (a strided copy, or the luma of every pixel) cost more than
    # the model.
    image = fit_to_input(image, spec)
    image = _convert_color(image, source_color, target)
    if baked:
        return np.ascontiguousarray(image if spec.layout == "NHWC" else image.transpose(2, 0, 1))
    # (x * scale - mean) / std as one multiply-add per value, in the output layout: one pass to float, two in
    # place (five passes and a transposed copy before: 1.0 ms of a 224x224 frame's 1.2 ms, now 0.12 ms).
    std = np.asarray(spec.std, np.float64)
    gain = (spec.scale / std).astype(np.float32)
    offset = (-np.asarray(spec.mean, np.float64) / std).astype(np.float32)
    if spec.layout == "NCHW":
        out = np.ascontiguousarray(image.transpose(2, 0, 1)).astype(np.float32)
        gain, offset = gain[:, None, None], offset[:, None, None]
    else:
        out = image.astype(np.float32)
    out *= gain
    out += offset
    return out


def preprocess_clip(frames, spec: ModelSpec, source_color: str = "BGR") -> np.ndarray:
    """Turn ``spec.clip_frames`` uint8 frames (oldest first, already sampled at ``spec.frame_stride``) into the
    float32 (C, T, H, W) clip a clip model takes: every frame goes through :func:`preprocess` as an image
    would, so a clip and a single frame are resized, coloured and normalised the same way."""
    if spec.task != "clip":
        raise BadInputError(f"preprocess_clip is for clip models; this one is a {spec.task} model")
    frames = list(frames)
    if len(frames) != spec.clip_frames:
        raise BadInputError(f"a clip of this model has {spec.clip_frames} frames, got {len(frames)}")
    image_spec = frame_spec(spec)
    return np.stack([preprocess(frame, image_spec, source_color) for frame in frames], axis=1)


def frame_spec(spec: ModelSpec) -> ModelSpec:
    """The spec of one frame of a clip model's clip: the same preprocessing, as a (C, H, W) image."""
    return spec.replace(task="image", layout="NCHW", clip_frames=0, frame_stride=1)


def _resize(image: np.ndarray, width: int, height: int) -> np.ndarray:
    import cv2  # only needed when sizes differ; keeps spec importable on a bare numpy install

    if image.shape[:2] == (height, width):
        return image
    # INTER_AREA for shrinking avoids aliasing; INTER_LINEAR for enlarging.
    shrink = image.shape[0] > height or image.shape[1] > width
    out = cv2.resize(image, (width, height), interpolation=cv2.INTER_AREA if shrink else cv2.INTER_LINEAR)
    return out if out.ndim == image.ndim else out[:, :, None]  # OpenCV drops a single channel axis


def crop_resize_to(spec: "ModelSpec") -> int:
    """``resize: crop``: the size the shorter side is resized to before the centre is cut (``spec.resize_to``,
    default the input size / CROP_FRACTION, i.e. 256 for 224)."""
    return spec.resize_to or round(max(spec.input_size) / CROP_FRACTION)


def fit_to_input(image: np.ndarray, spec: "ModelSpec") -> np.ndarray:
    """Bring an image to the model's input size the way ``spec.resize`` says:

    - ``squash``: resize to exactly the input size (the aspect ratio may change);
    - ``letterbox``: scale to fit inside, keep the aspect ratio, pad with grey bars;
    - ``crop``: resize the shorter side to ``spec.resize_to`` (default: the input size / 0.875, i.e. 256 for
      224), then cut the centre (torchvision's ImageNet evaluation transform).
    """
    height, width = spec.input_size
    h, w = image.shape[:2]
    if spec.resize == "squash":
        return _resize(image, width, height)
    if spec.resize == "letterbox":
        scale = min(height / h, width / w)
        nh, nw = min(height, max(1, round(h * scale))), min(width, max(1, round(w * scale)))
        out = np.full((height, width) + image.shape[2:], LETTERBOX_PAD, np.uint8)
        top, left = (height - nh) // 2, (width - nw) // 2
        out[top:top + nh, left:left + nw] = _resize(image, nw, nh)
        return out
    short = crop_resize_to(spec)
    # the shorter side becomes `short`, the longer one is truncated as torchvision's Resize does
    nh, nw = (short, int(short * w / h)) if h <= w else (int(short * h / w), short)
    nh, nw = max(nh, height), max(nw, width)
    resized = _resize(image, nw, nh)
    top, left = int(round((nh - height) / 2.0)), int(round((nw - width) / 2.0))
    return resized[top:top + height, left:left + width]
