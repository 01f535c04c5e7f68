"""Image-classification data sets: IDX files, class-per-folder trees and CSV label files.

Everything is loaded into an :class:`ImageTable` (uint8 images or file paths, integer labels, optional
group ids, split names) with no framework involved; :mod:`edgekit.training.torchdata` wraps it for
torch. Splits are made by group (subject/person id) when groups are known, so that images of the same
person never land on both sides of a train/test boundary.
"""
from __future__ import annotations

import csv
import gzip
import hashlib
import json
import logging
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from edgekit.core.errors import BadInputError
from edgekit.core.spec import FASHION_MNIST_LABELS, ModelSpec, preprocess

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}
VIDEO_SUFFIXES = {".avi", ".mp4", ".mkv", ".mov", ".webm", ".m4v", ".mpg", ".mpeg"}
MAX_FRAME_SIDE = 640  # frames sampled from a video are kept in memory at most this large
SPLITS = ("train", "val", "test")


@dataclass
class ImageTable:
    """Images (an in-memory uint8 array or a list of file paths) with labels, groups and split names."""

    labels: np.ndarray  # int64, one per image
    class_names: tuple[str, ...]
    color: str  # colour order of the decoded images: GRAY for IDX, BGR for files decoded by OpenCV
    arrays: np.ndarray | None = None  # N x H x W (x C) uint8
    paths: list[Path] | None = None
    groups: np.ndarray | None = None  # group id per image (person, subject, clip)
    split: np.ndarray = field(default=None)  # "train" / "val" / "test" per image, or "" if unassigned
    skipped: list[str] = field(default_factory=list)  # unreadable files left out, for the report
    fingerprint: str = ""  # of the data as loaded, before splitting (see data_fingerprint)
    labelled: bool = True  # False: images without labels (calibration, agreement with FP32 only)

    def __post_init__(self) -> None:
        if self.split is None:
            self.split = np.full(len(self.labels), "", dtype=object)

    def __len__(self) -> int:
        return len(self.labels)

    def image(self, index: int) -> np.ndarray:
        if self.arrays is not None:
            return self.arrays[index]
        return read_image(self.paths[index])

    def inputs(self, indices, spec: ModelSpec) -> np.ndarray:
        """The images at ``indices`` preprocessed for a model with ``spec``, stacked into one batch."""
        return np.stack([preprocess(self.image(i), spec, source_color=self.color) for i in indices])

    def indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.split == split)

    def relabel(self, labels: Sequence[str], source: object = "the data") -> None:
        """Renumber the classes into the order ``labels`` gives (a model's own label order, which need
        not be sorted); data with other classes is refused in one line."""
        labels = tuple(labels)
        if not self.labelled or labels == tuple(self.class_names):
            return
        if sorted(labels) != sorted(self.class_names):
            missing = sorted(set(labels) - set(self.class_names))
            extra = sorted(set(self.class_names) - set(labels))
            raise BadInputError(f"{source} has {len(self.class_names)} classes, the model {len(labels)}: "
                                + "; ".join(part for part in (
                                    f"the data lacks {_few(missing)}" if missing else "",
                                    f"the model has no {_few(extra)}" if extra else "") if part))
        new_index = {name: i for i, name in enumerate(labels)}
        mapping = np.array([new_index[name] for name in self.class_names], np.int64)
        self.labels = mapping[self.labels]
        self.class_names = labels

    def class_counts(self, split: str | None = None) -> np.ndarray:
        labels = self.labels if split is None else self.labels[self.indices(split)]
        return np.bincount(labels, minlength=len(self.class_names))


def _few(names: list[str], shown: int = 5) -> str:
    """Up to ``shown`` names and how many more: error lines stay short for 1000-class models."""
    text = ", ".join(repr(n) for n in names[:shown])
    return text + (f" and {len(names) - shown} more" if len(names) > shown else "")


def read_image(path: Path) -> np.ndarray:
    """Decode an image file to uint8 BGR; a file OpenCV cannot decode is a :class:`BadInputError`."""
    import cv2

    data = np.fromfile(str(path), dtype=np.uint8)  # fromfile+imdecode copes with non-ASCII paths
    image = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if image is None:
        raise BadInputError(f"cannot decode image {path} (corrupt or not an image)")
    return image


# --- IDX (MNIST / Fashion-MNIST) -------------------------------------------------------------------
def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (optionally gzipped) as a numpy array; checks the header against the size."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as exc:
        raise BadInputError(f"cannot read IDX file {path}: {exc}") from exc
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise BadInputError(f"{path} is not an unsigned-byte IDX file (bad magic number)")
    ndim = raw[3]
    if ndim < 1 or len(raw) < 4 + 4 * ndim:
        raise BadInputError(f"{path} is truncated: its header lists {ndim} dimensions")
    dims = struct.unpack(f">{ndim}I", raw[4 : 4 + 4 * ndim])
    body = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if body.size != int(np.prod(dims)):
        raise BadInputError(f"{path} is truncated: header says {dims}, found {body.size} values")
    return body.reshape(dims)


def _find_idx(folder: Path, prefix: str, kind: str) -> Path | None:
    hits = sorted(folder.glob(f"{prefix}-{kind}-idx*-ubyte*"))
    return hits[0] if hits else None


def load_idx_folder(folder: Path, class_names: tuple[str, ...] | None = None) -> ImageTable:
    """Load ``train-*`` and ``t10k-*`` IDX pairs; t10k becomes the test split."""
    arrays, labels, split = [], [], []
    for prefix, split_name in (("train", "train"), ("t10k", "test")):
        images_path = _find_idx(folder, prefix, "images")
        labels_path = _find_idx(folder, prefix, "labels")
        if images_path is None and labels_path is None:
            continue
        if images_path is None or labels_path is None:
            raise BadInputError(f"{folder}: found only one of the {prefix} images/labels IDX files")
        images, targets = read_idx(images_path), read_idx(labels_path)
        if images.ndim != 3 or len(images) != len(targets):
            raise BadInputError(f"{folder}: {prefix} images {images.shape} do not match labels {targets.shape}")
        arrays.append(images)
        labels.append(targets.astype(np.int64))
        split += [split_name] * len(targets)
    if not arrays:
        raise BadInputError(f"{folder}: no train-/t10k- IDX files found")
    all_labels = np.concatenate(labels)
    names = class_names or _idx_class_names(folder, int(all_labels.max()) + 1)
    return ImageTable(labels=all_labels, class_names=names, color="GRAY",
                      arrays=np.concatenate(arrays), split=np.array(split, dtype=object))


def _idx_class_names(folder: Path, count: int) -> tuple[str, ...]:
    names_file = folder / "labels.txt"
    if names_file.is_file():
        names = tuple(line.strip() for line in names_file.read_text().splitlines() if line.strip())
        if len(names) != count:
            raise BadInputError(f"{names_file} lists {len(names)} names but the labels use {count} classes")
        return names
    if "fashion" in str(folder).lower() and count == len(FASHION_MNIST_LABELS):
        return FASHION_MNIST_LABELS
    return tuple(str(i) for i in range(count))


# --- class-per-folder trees ---------------------------------------------------------------------
def _class_folders(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def load_image_folder(root: Path) -> ImageTable:
    """``root/<class>/*.jpg``; or ``root/{train,val,test}/<class>/*.jpg`` with the splits given."""
    split_dirs = [root / s for s in SPLITS if (root / s).is_dir()]
    parts = [(d.name, d) for d in split_dirs] if split_dirs else [("", root)]
    class_names = sorted({c.name for _, part in parts for c in _class_folders(part)})
    if len(class_names) < 2:
        raise BadInputError(f"{root}: need at least 2 class folders (root/<class>/<image>), found {len(class_names)}")
    paths, labels, split = [], [], []
    for split_name, part in parts:
        for index, name in enumerate(class_names):
            folder = part / name
            files = _images_in(folder) if folder.is_dir() else []
            if not files and (split_name in ("", "train")):
                raise BadInputError(f"class folder {folder} has no images ({', '.join(sorted(IMAGE_SUFFIXES))})")
            paths += files
            labels += [index] * len(files)
            split += [split_name] * len(files)
    return ImageTable(labels=np.array(labels, np.int64), class_names=tuple(class_names), color="BGR",
                      paths=paths, split=np.array(split, dtype=object))


# --- CSV label files -------------------------------------------------------------------------------
def load_csv(csv_path: Path, path_column: str = "path", label_column: str = "label",
             group_column: str | None = None, root: Path | None = None) -> ImageTable:
    """A CSV with an image path and a label per row (and optionally a group id such as a subject)."""
    root = root or csv_path.parent
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            columns = reader.fieldnames or []
            for column in (path_column, label_column, group_column):
                if column and column not in columns:
                    raise BadInputError(f"{csv_path}: no column {column!r} (columns: {', '.join(columns)[:200]})")
            rows = list(reader)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"{csv_path} is not a UTF-8 CSV file ({type(exc).__name__})") from None
    if not rows:
        raise BadInputError(f"{csv_path} has no rows")
    class_names = tuple(sorted({row[label_column] for row in rows}))
    index = {name: i for i, name in enumerate(class_names)}
    paths = [_resolve(root, row[path_column], row[label_column]) for row in rows]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise BadInputError(f"{csv_path}: {len(missing)} listed images do not exist, e.g. {missing[0]}")
    groups = np.array([row[group_column] for row in rows], dtype=object) if group_column else None
    return ImageTable(labels=np.array([index[row[label_column]] for row in rows], np.int64),
                      class_names=class_names, color="BGR", paths=paths, groups=groups)


def _resolve(root: Path, relative: str, label: str) -> Path:
    direct = root / relative
    if direct.is_file():
        return direct
    # State Farm's driver_imgs_list.csv names only the file; the image sits in a folder per class.
    by_class = root / label / relative
    return by_class if by_class.is_file() else direct


# --- unlabelled image sets (calibration; agreement with FP32) -----------------------------------------
def is_unlabelled_source(source: str | Path) -> bool:
    """A video, or a folder with images but fewer than the 2 class folders (``root/<class>/...``) a labelled
    image folder has."""
    source = Path(source)
    if source.is_file():
        return source.suffix.lower() in VIDEO_SUFFIXES
    if not source.is_dir() or list(source.glob("*-idx*-ubyte*")):
        return False
    folders = [d for d in _class_folders(source) if d.name not in SPLITS]
    return len(folders) < 2 and not any((source / s).is_dir() for s in SPLITS) and bool(_images_in(source))


def load_images(source: str | Path, limit: int = 0, seed: int = 0, split: str = "train") -> ImageTable:
    """Images without labels: every image under a folder (recursively), the ``path`` column of a CSV, or
    frames sampled evenly from a video. ``limit`` keeps at most that many (a seeded sample; for a video,
    evenly spaced frames). Every image gets ``split`` ("train" for calibration, "test" for evaluation)."""
    source = Path(source)
    if not source.exists():
        raise BadInputError(f"images not found: {source}")
    arrays, paths = None, None
    if source.is_file() and source.suffix.lower() in VIDEO_SUFFIXES:
        arrays = _video_frames(source, limit)
    elif source.is_file() and source.suffix.lower() == ".csv":
        paths = load_csv(source, label_column=_first_column(source)).paths
    elif source.is_dir():
        paths = _images_in(source)
    else:
        raise BadInputError(f"{source}: expected a folder of images, a video or a .csv with a path column")
    if paths is not None:
        if not paths:
            raise BadInputError(f"no images ({', '.join(sorted(IMAGE_SUFFIXES))}) under {source}")
        if limit and limit < len(paths):
            paths = [paths[i] for i in np.sort(np.random.default_rng(seed).choice(len(paths), limit, replace=False))]
    count = len(paths) if paths is not None else len(arrays)
    table = ImageTable(labels=np.zeros(count, np.int64), class_names=(), color="BGR", paths=paths, arrays=arrays,
                       split=np.full(count, split, dtype=object), labelled=False)
    if paths is not None:
        drop_unreadable(table)
    return table


def _first_column(csv_path: Path) -> str:
    try:
        with open(csv_path, newline="", encoding="utf-8") as fh:
            return (csv.DictReader(fh).fieldnames or ["path"])[0]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"{csv_path} is not a UTF-8 CSV file ({type(exc).__name__})") from None


def within_frame_side(frame: np.ndarray) -> np.ndarray:
    """A decoded video frame shrunk so that its longer side is at most MAX_FRAME_SIDE (kept as it is if smaller)."""
    import cv2

    scale = MAX_FRAME_SIDE / max(frame.shape[:2])
    return cv2.resize(frame, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA) if scale < 1 else frame


def _video_frames(path: Path, limit: int) -> np.ndarray:
    """Up to ``limit`` (0: 300) evenly spaced frames of a video, the longer side at most MAX_FRAME_SIDE."""
    import cv2

    capture = cv2.VideoCapture(str(path))
    if not capture.isOpened():
        raise BadInputError(f"cannot open video {path}")
    try:
        total = int(capture.get(cv2.CAP_PROP_FRAME_COUNT)) or 0
        want = limit or 300
        step = max(1, total // want) if total > 0 else 1
        frames, index = [], 0
        while len(frames) < want:
            ok, frame = capture.read()
            if not ok:
                break
            if index % step == 0 and frame is not None:
                frames.append(within_frame_side(frame))
            index += 1
    finally:
        capture.release()
    if not frames:
        raise BadInputError(f"no frames could be decoded from {path}")
    shapes = {f.shape for f in frames}
    if len(shapes) > 1:
        raise BadInputError(f"{path}: frames change size ({len(shapes)} sizes)")
    return np.stack(frames)


# --- entry point -------------------------------------------------------------------------------------
def load_table(source: str | Path, **csv_options) -> ImageTable:
    """Detect the layout of ``source`` (IDX folder, image folder or CSV file) and load it."""
    source = Path(source)
    if not source.exists():
        raise BadInputError(f"data not found: {source}")
    if source.is_file():
        if source.suffix.lower() != ".csv":
            raise BadInputError(f"{source}: expected a folder or a .csv label file")
        table = load_csv(source, **csv_options)
    elif list(source.glob("*-idx*-ubyte*")):
        table = load_idx_folder(source)
    else:
        table = load_image_folder(source)
    if table.paths is not None:
        drop_unreadable(table)
    return table


# What a split depends on besides the data: recorded in a model's spec (``ModelSpec.split``) by `edgekit
# train`, so that every command that evaluates rebuilds exactly that model's test split.
SPLIT_KEYS = ("val_fraction", "test_fraction", "seed", "group_column", "path_column", "label_column")


def data_fingerprint(table: ImageTable) -> str:
    """A short hash of everything the split depends on in the data itself: class names, labels, groups,
    the splits the data defines (t10k files, test/ folders) and each image's identity (its pixels for
    in-memory data, its file name for files). Computed before splitting."""
    digest = hashlib.sha256(json.dumps(list(table.class_names)).encode())
    digest.update(np.ascontiguousarray(table.labels, np.int64).tobytes())
    digest.update("\n".join(map(str, table.split)).encode())
    if table.groups is not None:
        digest.update("\n".join(map(str, table.groups)).encode())
    if table.arrays is not None:
        digest.update(np.ascontiguousarray(table.arrays).tobytes())
    else:
        digest.update("\n".join(p.name for p in table.paths).encode())
    return digest.hexdigest()[:16]


def load_split(source: str | Path, *, val_fraction: float = 0.1, test_fraction: float = 0.2, seed: int = 0,
               group_column: str | None = None, path_column: str = "path", label_column: str = "label",
               limit: int = 0, fingerprint: str | None = None, evaluate_all: bool = False) -> ImageTable:
    """Load a data set and split it by a recipe. The same recipe gives the same split, so evaluation
    commands rebuild a model's own test split from the recipe its training recorded (``**spec.split``).
    With ``fingerprint`` (recorded with the recipe), data that is not what the model was trained on is
    refused: its "test" images could be training images. ``limit`` keeps at most that many training
    images (the rest are marked "unused"). Images without labels (see :func:`is_unlabelled_source`) and
    ``evaluate_all`` (an imported model: none of the data was its training data) make every image a test image."""
    from edgekit.core.clips import is_clip_source, load_clips  # clips.py builds on this module

    if is_clip_source(source):  # labelled videos: segments for clip models
        return load_clips(source, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed, limit=limit,
                          fingerprint=fingerprint, evaluate_all=evaluate_all)
    if is_unlabelled_source(source):
        return load_images(source, split="test")
    csv_options = {"path_column": path_column, "label_column": label_column,
                   "group_column": group_column} if str(source).lower().endswith(".csv") else {}
    table = load_table(source, **csv_options)
    table.fingerprint = data_fingerprint(table)
    if fingerprint and fingerprint != table.fingerprint:
        raise BadInputError(f"{source} is not the data this model was trained on (data fingerprint "
                            f"{table.fingerprint}, the model's split recipe says {fingerprint}): its test split "
                            "cannot be rebuilt, and accuracy on it could include training images")
    if evaluate_all:
        table.split[:] = "test"
        return table
    assign_splits(table, val_fraction, test_fraction, seed=seed)
    if limit:
        train = table.indices("train")
        drop = np.random.default_rng(seed).permutation(train)[limit:]
        table.split[drop] = "unused"
    return table


def split_recipe(table: ImageTable, **options) -> dict:
    """The recipe ``load_split(source, **recipe)`` needs to rebuild ``table``'s split (options: SPLIT_KEYS)."""
    return {**{k: options[k] for k in SPLIT_KEYS}, "fingerprint": table.fingerprint}


def test_subset(table: ImageTable, count: int, seed: int = 0) -> np.ndarray:
    """Indices of up to ``count`` test images (all of them when count is 0), in a fixed order."""
    test = table.indices("test")
    if count and count < len(test):
        test = np.sort(np.random.default_rng(seed).choice(test, count, replace=False))
    return test


def drop_unreadable(table: ImageTable) -> None:
    """Decode every file once; unreadable ones are dropped, counted and named in a warning."""
    from tqdm import tqdm

    keep = []
    for i, path in enumerate(tqdm(table.paths, desc="checking images", unit="img", leave=False,
                                  disable=len(table.paths) < 500)):
        try:
            read_image(path)
            keep.append(i)
        except BadInputError:
            table.skipped.append(str(path))
    if table.skipped:
        log.warning("skipped %d unreadable image(s), e.g. %s", len(table.skipped), table.skipped[0])
    if not keep:
        raise BadInputError("no readable images in the data")
    if table.labelled and table.class_names:
        present = set(table.labels[keep].tolist())
        empty = [name for i, name in enumerate(table.class_names) if i not in present and (table.labels == i).any()]
        if empty:  # training on the other classes alone would report a perfect, meaningless score
            raise BadInputError(f"class {empty[0]!r}: none of its images could be read "
                                f"({sum(1 for _ in empty)} class(es) like this; e.g. {table.skipped[0]})")
    keep = np.array(keep)
    table.paths = [table.paths[i] for i in keep]
    table.labels = table.labels[keep]
    table.split = table.split[keep]
    if table.groups is not None:
        table.groups = table.groups[keep]


def assign_splits(table: ImageTable, val_fraction: float = 0.1, test_fraction: float = 0.2,
                  seed: int = 0) -> None:
    """Give every unassigned image a split. With groups, whole groups move together (no leakage);
    without, the split is stratified by class. Splits the data already defines are kept."""
    if not 0 <= val_fraction < 1 or not 0 <= test_fraction < 1 or val_fraction + test_fraction >= 1:
        raise BadInputError("val and test fractions must be in [0, 1) and sum to less than 1")
    rng = np.random.default_rng(seed)
    # Images in a given "train" split are still free to become validation images.
    table.split[table.split == "train"] = ""
    free = np.flatnonzero(table.split == "")
    has_test = (table.split == "test").any()
    test_fraction = 0.0 if has_test else test_fraction
    if (table.split == "val").any():
        val_fraction = 0.0
    fractions = (("test", test_fraction), ("val", val_fraction))
    if table.groups is not None:
        units = [free[table.groups[free] == g] for g in sorted(set(table.groups[free]))]
        order = rng.permutation(len(units))
    else:  # stratified: shuffle within each class, then interleave classes so any prefix is stratified
        units = [np.array([i]) for c in range(len(table.class_names))
                 for i in rng.permutation(free[table.labels[free] == c])]
        ranks = _rank_within_class(table.labels[np.concatenate(units)]) if units else np.zeros(0)
        order = np.argsort(ranks, kind="stable")
    position = 0
    for name, fraction in fractions:
        want, taken = round(len(free) * fraction), 0
        while taken < want and position < len(order):
            unit = units[order[position]]
            table.split[unit] = name
            taken += len(unit)
            position += 1
    for unit_index in order[position:]:
        table.split[units[unit_index]] = "train"
    for name in ("train", "test"):
        if not (table.split == name).any():
            raise BadInputError(f"the {name} split is empty: the data set is too small ({len(table)} images)")


def _rank_within_class(labels: np.ndarray) -> np.ndarray:
    """0 for the first image of each class, 1 for the second, ... (sorting by it interleaves classes)."""
    ranks = np.zeros(len(labels))
    for c in np.unique(labels):
        members = np.flatnonzero(labels == c)
        ranks[members] = np.arange(len(members)) / len(members)
    return ranks
