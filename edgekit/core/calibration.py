"""The one calibration iterator every INT8 path uses.

It yields plain numpy batches (N x C x H x W float32) from the *training* split (or from unlabelled images:
:func:`calibration_table`), through the model's own
:func:`~edgekit.core.spec.preprocess`, in a seeded order. PyTorch PTQ consumes it here; the export issue feeds
the same iterator to ONNX Runtime's ``CalibrationDataReader`` and to ``nncf.Dataset``, so every INT8
artifact sees the same images prepared the same way. :class:`CalibrationAudit` records what was seen.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass, field
from typing import Iterator

import numpy as np

from edgekit.core.errors import BadInputError
from edgekit.core.spec import ModelSpec
from edgekit.core.clips import ClipTable, is_clip_source, load_clips
from edgekit.core.data import ImageTable

MIN_RECOMMENDED_SAMPLES = 300


@dataclass
class CalibrationAudit:
    samples: int = 0
    source: str = ""  # where the images came from (the training data, or --calib DIR|VIDEO|CSV)
    class_counts: dict[str, int] = field(default_factory=dict)  # empty for unlabelled calibration images
    channel_mean: list[float] = field(default_factory=list)  # of the preprocessed tensors: ~0 if normalised
    channel_std: list[float] = field(default_factory=list)
    sha256: str = ""  # of the exact tensors fed to the model

    def to_dict(self) -> dict:
        return asdict(self)


def calibration_batches(table: ImageTable, spec: ModelSpec, num_samples: int, batch_size: int,
                        seed: int = 0, audit: CalibrationAudit | None = None) -> Iterator[np.ndarray]:
    """Yield up to ``num_samples`` preprocessed training images in batches; fills ``audit`` as it goes."""
    if isinstance(table, ClipTable) != (spec.task == "clip"):
        raise BadInputError("a clip model calibrates on clips: give labelled videos (--data <label>/*.avi or a "
                            "video,start,end,label CSV)" if spec.task == "clip" else
                            "this image model cannot calibrate on video clips; give images")
    pool = table.indices("train")
    if len(pool) < batch_size:
        raise BadInputError(f"only {len(pool)} calibration images in the train split; need at least one batch "
                            f"of {batch_size}")
    chosen = np.random.default_rng(seed).permutation(pool)[:num_samples]
    audit = audit if audit is not None else CalibrationAudit()
    digest = hashlib.sha256()
    total = np.zeros(spec.channels)
    total_sq = np.zeros(spec.channels)
    counts = np.zeros(len(table.class_names), np.int64)
    for start in range(0, len(chosen), batch_size):
        part = chosen[start:start + batch_size]
        batch = table.inputs(part, spec)
        digest.update(batch.tobytes())
        axes = {"NCHW": (0, 2, 3), "NHWC": (0, 1, 2), "NCTHW": (0, 2, 3, 4)}[spec.layout]
        total += batch.sum(axis=axes, dtype=np.float64)
        total_sq += np.square(batch, dtype=np.float64).sum(axis=axes)
        if table.labelled:
            counts += np.bincount(table.labels[part], minlength=len(counts))
        audit.samples += len(part)
        count = audit.samples * int(np.prod(spec.input_shape(1))) // spec.channels  # values per channel so far
        audit.channel_mean = (total / count).tolist()
        audit.channel_std = np.sqrt(np.maximum(total_sq / count - (total / count) ** 2, 0)).tolist()
        audit.class_counts = {name: int(c) for name, c in zip(table.class_names, counts)}
        audit.sha256 = digest.hexdigest()
        yield batch


def calibration_table(calib: str | None, data_table, size: int, seed: int = 0) -> tuple[ImageTable, str]:
    """(table, source): unlabelled images from ``calib`` (a folder, video or CSV: :func:`load_images`, at most
    ``size``) when given, else ``data_table()``, the labelled data's train split."""
    from edgekit.core.data import load_images

    if calib and is_clip_source(calib):  # labelled videos: every segment may calibrate a clip model
        table = load_clips(calib, evaluate_all=True)
        table.split[:] = "train"
        return table, str(calib)
    if calib:
        return load_images(calib, limit=size, seed=seed, split="train"), str(calib)
    table = data_table()
    return table, "train split of the data"
