"""Turn labelled video clips into face crops for training the attentiveness classifier.

Input is the DAiSEE layout (``DataSet/<split>/<person>/<clip>/<clip>.avi`` plus a labels CSV with a
``ClipID`` column and 0-3 levels such as ``Engagement``) or anything shaped like it: a folder searched
recursively for videos, a CSV naming each clip (file name, with or without extension) and its level, and
the person taken from a folder ``person_level`` levels above the video.

Output: ``OUT/<label>/<person>_<clip>_<frame>.jpg`` face crops sampled at ``fps`` frames per second,
``label`` = ``attentive`` when the level >= ``threshold`` else ``not_attentive``, and ``OUT/faces.csv``
(path, label, person, clip, level) which ``edgekit train --data OUT/faces.csv --group-column person`` reads
with every person kept inside one split.
"""
from __future__ import annotations

import csv
import os
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.edge_apps.faces import HaarFaceDetector, largest
from edgekit.core import checks
from edgekit.core.errors import BadInputError

VIDEO_SUFFIXES = {".avi", ".mp4", ".mkv", ".mov", ".webm"}


@dataclass(frozen=True)
class FaceDatasetConfig:
    videos: str
    labels: str
    out: str
    column: str = "Engagement"
    clip_column: str = "ClipID"
    threshold: int = 2  # level >= threshold -> attentive (DAiSEE: 0 very low .. 3 very high)
    fps: float = 1.0
    size: int = 112  # crops are resized to size x size
    margin: float = 0.2
    person_level: int = 2  # DAiSEE: <person>/<clip>/<clip>.avi -> two folders up

    def __post_init__(self) -> None:
        checks.within("--fps", self.fps, 0, 120, low_open=True)
        checks.within("--size", self.size, 16, 4096)
        checks.within("--threshold", self.threshold, 0, 3)
        checks.within("margin", self.margin, 0, 2)
        checks.within("--person-level", self.person_level, 0, 16)


@dataclass
class FaceDatasetReport:
    clips: int = 0
    unlabelled: list = field(default_factory=list)
    unreadable: list = field(default_factory=list)
    frames: int = 0
    faces: int = 0
    per_label: dict = field(default_factory=dict)
    persons: set = field(default_factory=set)


def read_levels(path: Path, clip_column: str, column: str) -> dict[str, int]:
    if not path.is_file():
        raise BadInputError(f"labels CSV not found: {path}")
    try:
        return _read_levels(path, clip_column, column)
    except (UnicodeDecodeError, csv.Error) as exc:
        raise BadInputError(f"{path} is not a UTF-8 CSV file ({type(exc).__name__})") from None


def _read_levels(path: Path, clip_column: str, column: str) -> dict[str, int]:
    with open(path, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = [name.strip() for name in reader.fieldnames or []]
        for name in (clip_column, column):
            if name not in fields:
                raise BadInputError(f"{path}: no column {name!r} (columns: {', '.join(fields)})")
        levels = {}
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): (v or "").strip() for k, v in row.items() if k}
            try:
                levels[Path(row[clip_column]).stem] = int(float(row[column]))
            except ValueError:
                raise BadInputError(f"{path}:{line}: {column} is {row[column]!r}, not a number") from None
    return levels


def build_face_dataset(cfg: FaceDatasetConfig, progress=None) -> FaceDatasetReport:
    root, out = Path(cfg.videos), Path(cfg.out)
    if not root.is_dir():
        raise BadInputError(f"video folder not found: {root}")
    if cfg.fps <= 0 or cfg.size < 16 or cfg.person_level < 1:
        raise BadInputError("--fps must be > 0, --size >= 16 and --person-level >= 1")
    levels = read_levels(Path(cfg.labels), cfg.clip_column, cfg.column)
    videos = sorted(p for p in root.rglob("*") if p.suffix.lower() in VIDEO_SUFFIXES)
    if not videos:
        raise BadInputError(f"{root}: no videos ({', '.join(sorted(VIDEO_SUFFIXES))}) found")
    detector = HaarFaceDetector()
    try:  # staged: crops land in a hidden folder and move into place, faces.csv last, only when all went well
        out.mkdir(parents=True, exist_ok=True)
        stage = Path(tempfile.mkdtemp(prefix=".edgekit-dataset-", dir=out))
    except OSError as exc:
        raise BadInputError(f"cannot write to {out}: {exc.strerror}") from None
    try:
        report = _collect(cfg, root, videos, levels, detector, stage, progress)
        _publish(stage, out)
    finally:
        shutil.rmtree(stage, ignore_errors=True)
    return report


def _collect(cfg: FaceDatasetConfig, root: Path, videos: list[Path], levels: dict, detector, out: Path,
             progress) -> FaceDatasetReport:
    import cv2

    report = FaceDatasetReport()
    rows = []
    for video_path in progress(videos) if progress else videos:
        if video_path.stem not in levels:
            report.unlabelled.append(str(video_path))
            continue
        relative = video_path.relative_to(root)
        person = relative.parents[cfg.person_level - 1].name if len(relative.parents) > cfg.person_level else "unknown"
        level = levels[video_path.stem]
        label = "attentive" if level >= cfg.threshold else "not_attentive"
        video = cv2.VideoCapture(str(video_path))
        if not video.isOpened():
            report.unreadable.append(str(video_path))
            continue
        report.clips += 1
        step = max(1, round((video.get(cv2.CAP_PROP_FPS) or 30.0) / cfg.fps))
        (out / label).mkdir(parents=True, exist_ok=True)
        index = 0
        while True:
            ok, image = video.read()
            if not ok:
                break
            if index % step == 0:
                report.frames += 1
                face = largest(detector.detect(image))
                if face is not None:
                    crop = face.expand(cfg.margin, image.shape[1], image.shape[0]).crop(image)
                    name = f"{label}/{person}_{video_path.stem}_{index:05d}.jpg"
                    if not cv2.imwrite(str(out / name), cv2.resize(crop, (cfg.size, cfg.size),
                                                                   interpolation=cv2.INTER_AREA)):
                        raise BadInputError(f"cannot write {Path(cfg.out) / name} (disk full?)")
                    rows.append({"path": name, "label": label, "person": person, "clip": video_path.stem,
                                 "level": level})
                    report.faces += 1
                    report.per_label[label] = report.per_label.get(label, 0) + 1
                    report.persons.add(person)
            index += 1
        video.release()
    if not rows:
        raise BadInputError(f"no faces found in {report.frames} sampled frames of {report.clips} labelled clips")
    try:
        with open(out / "faces.csv", "w", newline="", encoding="utf-8") as f:
            writer = csv.DictWriter(f, fieldnames=["path", "label", "person", "clip", "level"])
            writer.writeheader()
            writer.writerows(rows)
    except OSError as exc:
        raise BadInputError(f"cannot write {Path(cfg.out) / 'faces.csv'}: {exc.strerror}") from None
    return report


def _publish(stage: Path, out: Path) -> None:
    """Move the staged crops into ``out`` (same file system: renames), then faces.csv, whose presence means
    the data set is complete."""
    for folder in sorted(p for p in stage.iterdir() if p.is_dir()):
        (out / folder.name).mkdir(exist_ok=True)
        for image in folder.iterdir():
            os.replace(image, out / folder.name / image.name)
    os.replace(stage / "faces.csv", out / "faces.csv")
