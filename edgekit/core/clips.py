"""Clip data: labelled video segments for clip models (task "clip", see edgekit/models/video.py).

Two layouts, both loaded into a :class:`ClipTable` (an :class:`~edgekit.core.data.ImageTable` whose rows are
segments of videos, so splitting, relabelling and class counts work as for images):

- a folder of labelled videos, ``root/<label>/*.avi|mp4|...``: one segment per video, the whole video;
- a CSV of segments, ``video, start, end, label[, subject]`` (the layout of driver-activity data sets such as
  Drive&Act): ``video`` relative to the CSV's folder, ``start``/``end`` frame numbers (end exclusive), and the
  optional subject (person) id, which keeps a person's segments on one side of every split.

A clip is ``clip_frames`` frames taken every ``frame_stride``-th frame of a segment: from its middle when
evaluating, from a random position when training (:meth:`ClipTable.clip`). A segment shorter than the clip
repeats its last frame. Frames are decoded with OpenCV, their longer side at most MAX_FRAME_SIDE, and decoded
segments are kept in memory up to ``cache_bytes``. Untrusted files are checked before work: a segment may
span at most MAX_SEGMENT_FRAMES frames and a CSV at most MAX_SEGMENTS rows.
"""
from __future__ import annotations

import csv
import hashlib
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.core.data import (SPLITS, VIDEO_SUFFIXES, ImageTable, _class_folders, assign_splits, data_fingerprint,
                               within_frame_side)
from edgekit.core.errors import BadInputError
from edgekit.core.spec import preprocess_clip

log = logging.getLogger(__name__)

MAX_SEGMENT_FRAMES = 100_000  # about an hour at 30 fps
MAX_SEGMENTS = 1_000_000
SEGMENT_COLUMNS = ("video", "start", "end", "label")
DEFAULT_CACHE_BYTES = 2 << 30


def _videos_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in VIDEO_SUFFIXES)


def is_clip_source(source: str | Path) -> bool:
    """A folder of class folders holding videos, or a CSV whose header has video, start, end and label."""
    source = Path(source)
    if source.is_dir():
        return any(_videos_in(d) for d in _class_folders(source) if d.name not in SPLITS)
    if source.is_file() and source.suffix.lower() == ".csv":
        try:
            with open(source, newline="", encoding="utf-8") as fh:
                header = next(csv.reader(fh), [])
        except (OSError, UnicodeDecodeError, csv.Error):
            return False
        return all(column in header for column in SEGMENT_COLUMNS)
    return False


@dataclass
class ClipTable(ImageTable):
    """Video segments with labels: ``paths[i]`` holds segment i, frames ``starts[i]`` to ``ends[i]`` (exclusive)."""

    starts: np.ndarray = field(default=None)
    ends: np.ndarray = field(default=None)
    cache_bytes: int = DEFAULT_CACHE_BYTES
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)
    _cached: int = 0

    def image(self, index: int) -> np.ndarray:
        raise BadInputError("this data holds video clips, not images: it is for clip models (task 'clip')")

    def segment(self, index: int) -> np.ndarray:
        """All frames of segment ``index`` (F x H x W x 3 uint8, BGR), decoded once and then cached."""
        key = int(index)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        frames = read_frames(self.paths[key], int(self.starts[key]), int(self.ends[key]))
        self._cache[key] = frames
        self._cached += frames.nbytes
        while self._cached > self.cache_bytes and len(self._cache) > 1:
            _, dropped = self._cache.popitem(last=False)
            self._cached -= dropped.nbytes
        return frames

    def clip(self, index: int, frames: int, stride: int, rng: np.random.Generator | None = None) -> list[np.ndarray]:
        """``frames`` frames of segment ``index``, every ``stride``-th: from the middle of the segment, or from a
        random start when ``rng`` is given (training)."""
        segment = self.segment(index)
        span = (frames - 1) * stride + 1
        room = max(0, len(segment) - span)
        first = int(rng.integers(0, room + 1)) if rng is not None else room // 2
        picks = np.minimum(first + np.arange(frames) * stride, len(segment) - 1)
        return [segment[i] for i in picks]

    def inputs(self, indices, spec) -> np.ndarray:
        """The clips at ``indices`` preprocessed for the clip model ``spec``, as one (N, C, T, H, W) batch."""
        return np.stack([preprocess_clip(self.clip(i, spec.clip_frames, spec.frame_stride), spec, self.color)
                         for i in indices])


def read_frames(path: Path, start: int, end: int) -> np.ndarray:
    """Frames ``start`` to ``end`` (exclusive) of a video, the longer side at most MAX_FRAME_SIDE; a segment the
    video does not have (fewer frames than ``start`` + 1) is a BadInputError, a short one keeps what exists."""
    import cv2

    if not 0 <= start < end or end - start > MAX_SEGMENT_FRAMES:
        raise BadInputError(f"{path}: segment {start}-{end} must have 1 to {MAX_SEGMENT_FRAMES} frames")
    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise BadInputError(f"cannot open video {path}")
    frames = []
    try:
        if start:
            capture.set(cv2.CAP_PROP_POS_FRAMES, start)
        while len(frames) < end - start:
            ok, frame = capture.read()
            if not ok or frame is None:
                break
            frame = within_frame_side(frame)
            if frames and frame.shape != frames[0].shape:
                raise BadInputError(f"{path}: frames change size within segment {start}-{end}")
            frames.append(frame)
    finally:
        capture.release()
    if not frames:
        raise BadInputError(f"no frames could be decoded from {path} at frame {start}")
    return np.stack(frames)


def frame_count(path: Path) -> int:
    """The number of frames of a video (its header's count, else by decoding, at most MAX_SEGMENT_FRAMES)."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise BadInputError(f"cannot open video {path}")
    try:
        count = int(capture.get(cv2.CAP_PROP_FRAME_COUNT) or 0)
        if count <= 0:
            while count < MAX_SEGMENT_FRAMES and capture.grab():
                count += 1
    finally:
        capture.release()
    if count <= 0:
        raise BadInputError(f"{path}: no frames")
    return min(count, MAX_SEGMENT_FRAMES)


def load_clip_folder(root: Path) -> ClipTable:
    """``root/<label>/*.avi|...``: one segment per video. Unreadable videos are skipped and named."""
    folders = [d for d in _class_folders(root) if d.name not in SPLITS and _videos_in(d)]
    if len(folders) < 2:
        raise BadInputError(f"{root}: need at least 2 class folders with videos, found {len(folders)}")
    paths, labels, ends, skipped = [], [], [], []
    for label, folder in enumerate(folders):
        for video in _videos_in(folder):
            try:
                ends.append(frame_count(video))
            except BadInputError:
                skipped.append(str(video))
                continue
            paths.append(video)
            labels.append(label)
    return _table(paths, labels, tuple(d.name for d in folders), np.zeros(len(paths), np.int64), ends, None,
                  skipped, root)


def load_segments_csv(path: Path) -> ClipTable:
    """A CSV of segments (see the module docstring); rows are checked before any video is opened."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in SEGMENT_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise BadInputError(f"{path}: missing column(s) {', '.join(missing)} (need {', '.join(SEGMENT_COLUMNS)}"
                                    "[, subject])")
            rows = []
            for row in reader:
                rows.append(row)
                if len(rows) > MAX_SEGMENTS:
                    raise BadInputError(f"{path}: more than {MAX_SEGMENTS} segments")
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"{path} is not a UTF-8 CSV file ({type(exc).__name__})") from None
    if not rows:
        raise BadInputError(f"{path}: no segments")
    names = tuple(sorted({row["label"] for row in rows}))
    if len(names) < 2:
        raise BadInputError(f"{path}: need at least 2 labels, found {list(names)}")
    root = path.parent.resolve()
    paths, labels, starts, ends, subjects, skipped = [], [], [], [], [], []
    known: dict[Path, bool] = {}
    for number, row in enumerate(rows, start=2):
        try:
            start, end = int(row["start"]), int(row["end"])
        except (TypeError, ValueError):
            raise BadInputError(f"{path} line {number}: start and end must be frame numbers, got "
                                f"{row['start']!r}, {row['end']!r}") from None
        if not 0 <= start < end or end - start > MAX_SEGMENT_FRAMES:
            raise BadInputError(f"{path} line {number}: segment {start}-{end} must have 1 to {MAX_SEGMENT_FRAMES} "
                                "frames (end exclusive)")
        video = (root / (row["video"] or "")).resolve()
        if root not in video.parents:
            raise BadInputError(f"{path} line {number}: video {row['video']!r} is outside {root}")
        if video not in known:
            known[video] = video.is_file() and video.suffix.lower() in VIDEO_SUFFIXES
        if not known[video]:
            skipped.append(f"{row['video']} (line {number})")
            continue
        paths.append(video)
        labels.append(names.index(row["label"]))
        starts.append(start)
        ends.append(end)
        subjects.append(row.get("subject") or "")
    groups = np.array(subjects, dtype=object) if any(subjects) else None
    return _table(paths, labels, names, starts, ends, groups, skipped, path)


def _table(paths, labels, names, starts, ends, groups, skipped, source) -> ClipTable:
    if skipped:
        log.warning("skipped %d video(s) that cannot be opened, e.g. %s", len(skipped), skipped[0])
    if not paths:
        raise BadInputError(f"{source}: no readable videos")
    table = ClipTable(labels=np.array(labels, np.int64), class_names=names, color="BGR", paths=paths,
                      groups=groups, skipped=skipped, starts=np.asarray(starts, np.int64),
                      ends=np.asarray(ends, np.int64))
    digest = hashlib.sha256(data_fingerprint(table).encode())
    digest.update(table.starts.tobytes() + table.ends.tobytes())
    table.fingerprint = digest.hexdigest()[:16]
    return table


def load_clips(source: str | Path, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
               limit: int = 0, fingerprint: str | None = None, evaluate_all: bool = False, **_csv_options) -> ClipTable:
    """Load clip data and split it like :func:`edgekit.core.data.load_split` (by subject when the CSV names
    them, else stratified by class); the same recipe gives the same split."""
    source = Path(source)
    if not source.exists():
        raise BadInputError(f"data not found: {source}")
    table = load_clip_folder(source) if source.is_dir() else load_segments_csv(source)
    if fingerprint and fingerprint != table.fingerprint:
        raise BadInputError(f"{source} is not the data this model was trained on (data fingerprint "
                            f"{table.fingerprint}, the model's split recipe says {fingerprint})")
    if evaluate_all:
        table.split[:] = "test"
        return table
    assign_splits(table, val_fraction, test_fraction, seed=seed)
    if limit:
        drop = np.random.default_rng(seed).permutation(table.indices("train"))[limit:]
        table.split[drop] = "unused"
    return table
