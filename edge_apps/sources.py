"""Frame sources: a camera index, a video file, an image folder or a stream URL, as timestamped frames.

Live sources (cameras, URLs) are read by a background thread that keeps only the newest frame: a slow model
then works on the freshest picture instead of an ever older queue, and every frame it never saw is counted
as dropped. Files and folders are read in order, every frame, since nothing is lost by waiting for them.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgekit.errors import BadInputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}


@dataclass
class Frame:
    index: int  # position in the source (frames never seen by the model leave gaps)
    image: np.ndarray  # BGR uint8, as OpenCV decodes
    captured: float  # time.monotonic() when the frame was read


@dataclass
class SourceStats:
    read: int = 0
    dropped: int = 0  # live sources: frames replaced by a newer one before the pipeline took them
    corrupt: int = 0  # unreadable images in a folder, skipped


def is_live(source: str) -> bool:
    return source.isdigit() or "://" in source


class FrameSource:
    """Iterate over :class:`Frame` objects; ``stats`` counts what was read, dropped and skipped."""

    def __init__(self, source: str):
        self.source = str(source)
        self.stats = SourceStats()
        self.live = is_live(self.source)
        path = Path(self.source)
        if not self.live and not path.exists():
            raise BadInputError(f"source not found: {self.source}")
        self.folder = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if not self.live and path.is_dir() else None
        if self.folder is not None and not self.folder:
            raise BadInputError(f"{self.source}: no images in this folder")
        self.capture = None if self.folder is not None else self._open_capture()
        self._latest: Frame | None = None
        self._lock = threading.Condition()
        self._stopped = False
        self.error: str | None = None  # why a live source ended, if it did

    def _open_capture(self):
        import cv2

        capture = cv2.VideoCapture(int(self.source) if self.source.isdigit() else self.source)
        if not capture.isOpened():
            raise BadInputError(f"cannot open video source {self.source!r} (missing camera, unknown codec or "
                                f"unreachable URL)")
        return capture

    @property
    def fps(self) -> float:
        if self.capture is None:
            return 0.0
        import cv2

        return float(self.capture.get(cv2.CAP_PROP_FPS) or 0.0)

    def __iter__(self) -> Iterator[Frame]:
        if self.folder is not None:
            yield from self._folder_frames()
        elif self.live:
            yield from self._live_frames()
        else:
            yield from self._file_frames()

    def _folder_frames(self) -> Iterator[Frame]:
        import cv2

        for index, path in enumerate(self.folder):
            image = cv2.imread(str(path), cv2.IMREAD_COLOR)
            if image is None:
                self.stats.corrupt += 1
                continue
            self.stats.read += 1
            yield Frame(index, image, time.monotonic())

    def _file_frames(self) -> Iterator[Frame]:
        index = 0
        while True:
            ok, image = self.capture.read()
            if not ok:
                return  # end of file (a truncated file ends here too; the summary says how many were read)
            self.stats.read += 1
            yield Frame(index, image, time.monotonic())
            index += 1

    def _reader(self) -> None:
        index = 0
        while not self._stopped:
            ok, image = self.capture.read()
            if not ok:
                self.error = f"source {self.source!r} stopped delivering frames"
                break
            with self._lock:
                if self._latest is not None:
                    self.stats.dropped += 1
                self._latest = Frame(index, image, time.monotonic())
                self.stats.read += 1
                self._lock.notify()
            index += 1
        with self._lock:
            self._stopped = True
            self._lock.notify()

    def _live_frames(self) -> Iterator[Frame]:
        thread = threading.Thread(target=self._reader, name="edgekit-capture", daemon=True)
        thread.start()
        try:
            while True:
                with self._lock:
                    while self._latest is None and not self._stopped:
                        self._lock.wait(timeout=1.0)
                    frame, self._latest = self._latest, None
                if frame is None:
                    return
                yield frame
        finally:
            self._stopped = True
            thread.join(timeout=2.0)

    def close(self) -> None:
        self._stopped = True
        if self.capture is not None:
            self.capture.release()
