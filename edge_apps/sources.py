"""Frame sources: a camera index, a video file, an image folder, a stream URL or a Raspberry Pi camera module
(``picamera2[:N]``, edge_apps/picamera.py), as timestamped frames.

Every source is decoded by a background thread, so decoding overlaps with inference. Live sources (cameras,
URLs) keep only the newest frame: a slow model then works on the freshest picture instead of an ever older
queue, and every frame it never saw is counted as dropped. Files and folders are read in order, every frame,
since nothing is lost by waiting for them.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

from edgekit.core.errors import BadInputError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".webp", ".ppm", ".pgm", ".tif", ".tiff"}


@dataclass
class Frame:
    index: int  # position in the source (frames never seen by the model leave gaps)
    image: np.ndarray  # BGR uint8, as OpenCV decodes
    captured: float  # time.monotonic() when the frame was read
    t: float  # source time in seconds: video time for files and folders, seconds since start for live sources
    prepared: object = None  # what the source's ``transform`` computed ahead (e.g. the model input)


@dataclass
class SourceStats:
    read: int = 0
    dropped: int = 0  # live sources: frames replaced by a newer one before the pipeline took them
    corrupt: int = 0  # unreadable images in a folder or undecodable video frames, skipped
    reconnects: int = 0  # URL sources: successful re-opens after the stream dropped


def is_live(source: str) -> bool:
    from edgekit.edge_apps.picamera import is_picamera2

    return source.isdigit() or "://" in source or is_picamera2(source)


def is_url(source: str) -> bool:
    return "://" in source


class FrameSource:
    """Iterate over :class:`Frame` objects; ``stats`` counts what was read, dropped and skipped.

    A reader thread decodes ahead of the pipeline, so decoding overlaps with inference. Live sources keep
    only the newest frame; files and folders go through a short queue and no frame is lost. URL sources
    that drop are re-opened with exponential backoff (``reconnect`` attempts, 0.5 s doubling to 8 s).
    ``loop`` restarts a file or folder at its end (a file standing in for a camera that never ends).
    """

    QUEUE = 4  # frames decoded ahead for files and folders
    MAX_BAD_FRAMES = 3  # undecodable frames in a row before a video file counts as ended
    HEALTHY = 30.0  # seconds of frames after which a URL's reconnect attempts start afresh

    def __init__(self, source: str, reconnect: int = 5, fps: float = 0.0, realtime: bool = False,
                 loop: bool = False):
        self.source = str(source)
        self.stats = SourceStats()
        # realtime: play a file or folder at its frame rate and treat it like a camera (newest frame wins)
        self.device = is_live(self.source)  # a camera or a URL
        self.realtime = realtime and not self.device
        self.live = self.device or self.realtime
        self.reconnect = reconnect if is_url(self.source) else 0
        self.loop = loop and not self.device
        path = Path(self.source)
        if not self.device and not path.exists():
            raise BadInputError(f"source not found: {self.source}")
        self.folder = sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES) \
            if not self.device and path.is_dir() else None
        if self.folder is not None and not self.folder:
            raise BadInputError(f"{self.source}: no images in this folder")
        self.capture = None if self.folder is not None else self._open_capture()
        self.frame_count = 0 if self.capture is None or self.device else int(self._prop("CAP_PROP_FRAME_COUNT"))
        self._fps = fps or (self._prop("CAP_PROP_FPS") if self.capture is not None else 0.0) or 25.0
        self._latest: Frame | None = None
        self._queue: deque = deque()
        self._lock = threading.Condition()
        self._stopped = False
        self._done = False
        self._attempts, self._healthy_since = 0, time.monotonic()
        self._thread: threading.Thread | None = None
        # Frame -> Frame, run on the reader thread (resizing, preprocessing ahead of the model)
        self.transform: Callable[[Frame], Frame] | None = None
        self.error: str | None = None  # why the source ended early, if it did
        self.reduce = 1  # an MJPEG video decoded at 1/reduce of its size (set by reduce_decoding)
        self._raw_decoded = False  # a raw JPEG of this source decoded at the reduced size

    def _open_capture(self):
        import cv2

        from edgekit.edge_apps.picamera import Picamera2Capture, is_picamera2

        if is_picamera2(self.source):
            return Picamera2Capture(self.source)
        capture = cv2.VideoCapture(int(self.source) if self.source.isdigit() else self.source)
        if not capture.isOpened():
            raise BadInputError(f"cannot open video source {self.source!r} (missing camera, unknown codec or "
                                f"unreachable URL)")
        return capture

    @property
    def size(self) -> tuple[int, int] | None:
        """(width, height) of a video file or stream as it reports them (None for folders and cameras)."""
        if self.capture is None or self.device and not is_url(self.source):
            return None
        width, height = int(self._prop("CAP_PROP_FRAME_WIDTH")), int(self._prop("CAP_PROP_FRAME_HEIGHT"))
        return (width, height) if width > 0 and height > 0 else None

    def reduce_decoding(self, min_width: int, min_height: int) -> int:
        """Decode an MJPEG video at 1/2, 1/4 or 1/8 of its size when the frames stay at least
        ``min_width`` x ``min_height``: libjpeg then skips most of the inverse DCT and colour conversion work
        (a 640x480 frame: 1.6 ms full, 0.8 ms at half size on this project's x86 machine), and everything after
        it touches fewer pixels. Only for files and URLs that OpenCV reads through FFmpeg, whose raw mode hands
        over each frame's JPEG; other codecs, cameras and folders decode as before. Returns the factor used."""
        import cv2

        size = self.size
        if size is None or self._fourcc() != "MJPG" or self.capture.getBackendName() != "FFMPEG":
            return 1
        factor = 1
        while factor < 8 and size[0] // (2 * factor) >= min_width and size[1] // (2 * factor) >= min_height:
            factor *= 2
        if factor > 1 and self.capture.set(cv2.CAP_PROP_FORMAT, -1):
            self.reduce = factor
        return self.reduce

    def _fourcc(self) -> str:
        code = int(self._prop("CAP_PROP_FOURCC"))
        return "".join(chr((code >> (8 * i)) & 0xFF) for i in range(4)).upper()

    def _read(self) -> tuple[bool, np.ndarray | None]:
        """One frame from the capture: decoded by OpenCV, or from the raw JPEG at the reduced size."""
        import cv2

        ok, image = self.capture.read()
        if not ok or self.reduce == 1 or image is None:
            return ok, image
        flag = {2: cv2.IMREAD_REDUCED_COLOR_2, 4: cv2.IMREAD_REDUCED_COLOR_4, 8: cv2.IMREAD_REDUCED_COLOR_8}[self.reduce]
        decoded = cv2.imdecode(image.reshape(-1), flag) if image.dtype == np.uint8 and image.size else None
        if decoded is None and not self._raw_decoded:
            # The first frame is not a JPEG libjpeg reads (some cameras' MJPEG leaves out its Huffman tables,
            # which FFmpeg fills in): decode this source the ordinary way from its start.
            self.reduce = 1
            self.capture.release()
            self.capture = self._open_capture()
            return self.capture.read()
        self._raw_decoded = self._raw_decoded or decoded is not None
        return decoded is not None, decoded

    def _prop(self, name: str) -> float:
        import cv2

        return float(self.capture.get(getattr(cv2, name)) or 0.0)

    @property
    def fps(self) -> float:
        """Frames per second of a video file or camera (25 when the source does not say)."""
        return self._fps

    def _decode(self) -> Iterator[np.ndarray]:
        """Decoded images in source order, the file or folder again and again with ``loop`` (as long as a
        pass yields a frame, so an unreadable file cannot spin)."""
        import cv2

        while True:
            before = self.stats.read
            yield from self._decode_once()
            if not self.loop or self._stopped or self.stats.read == before:
                return
            if self.capture is not None:
                self.capture.set(cv2.CAP_PROP_POS_FRAMES, 0)

    def _decode_once(self) -> Iterator[np.ndarray]:
        """One pass over the source; bookkeeping of corrupt frames, ends and reconnects."""
        import cv2

        if self.folder is not None:
            for path in self.folder:
                image = cv2.imread(str(path), cv2.IMREAD_COLOR)
                if image is None:
                    self.stats.corrupt += 1
                    yield None  # keeps the index (and the time) of the frames after it
                else:
                    yield image
            return
        bad = 0  # failed reads in a row; they were corrupt frames if a good one follows, else the end
        while not self._stopped:
            ok, image = self._read()
            if ok and image is not None:
                self.stats.corrupt += bad
                for _ in range(bad):
                    yield None  # keeps the index (and the time) of the frames after them
                bad = 0
                yield image
                continue
            if not self.device and bad < self.MAX_BAD_FRAMES and self._prop("CAP_PROP_POS_FRAMES") < self.frame_count - 1:
                bad += 1  # an undecodable frame inside the file, or a truncated end: the next read tells
                continue
            if is_url(self.source) and self._reopen():
                continue
            if self.device:
                self.error = f"source {self.source!r} stopped delivering frames"
            elif not self.loop and self.stats.read + self.stats.corrupt < self.frame_count:
                self.error = f"{self.source} ended after {self.stats.read} of {self.frame_count} frames (truncated?)"
            return

    def _reopen(self) -> bool:
        """Re-open a dropped URL with backoff. The attempts start afresh only after HEALTHY seconds of
        frames, so a URL that keeps ending (a file served over HTTP) stops after ``reconnect`` replays."""
        import cv2

        now = time.monotonic()
        if now - self._healthy_since >= self.HEALTHY:
            self._attempts = 0
        while self._attempts < self.reconnect and not self._stopped:
            time.sleep(min(8.0, 0.5 * 2 ** self._attempts))
            self._attempts += 1
            self.capture.release()
            self.capture = cv2.VideoCapture(self.source)
            if self.reduce > 1 and not self.capture.set(cv2.CAP_PROP_FORMAT, -1):
                self.reduce = 1  # the stream came back in a form without raw packets: decode it as usual
            if self.capture.isOpened():
                self.stats.reconnects += 1
                self._healthy_since = time.monotonic()
                return True
        return False

    def _reader(self) -> None:
        start = time.monotonic()
        try:
            for index, image in enumerate(self._decode()):
                if image is None:
                    continue
                if self.realtime:
                    time.sleep(max(0.0, start + index / self._fps - time.monotonic()))
                now = time.monotonic()
                frame = Frame(index, image, now, index / self._fps if self.realtime or not self.live else now - start)
                if self.transform is not None:
                    frame = self.transform(frame)
                with self._lock:
                    if self.live:
                        if self._latest is not None:
                            self.stats.dropped += 1
                        self._latest = frame
                    else:
                        self._lock.wait_for(lambda: len(self._queue) < self.QUEUE or self._stopped)
                        if self._stopped:
                            break
                        self._queue.append(frame)
                    self.stats.read += 1
                    self._lock.notify_all()
                if self._stopped:
                    break
        finally:
            with self._lock:
                self._done = True
                self._lock.notify_all()

    def _take(self) -> Frame | None:
        with self._lock:
            self._lock.wait_for(lambda: self._latest is not None or self._queue or self._done)
            if self._queue:
                frame = self._queue.popleft()
            else:
                frame, self._latest = self._latest, None
            self._lock.notify_all()
            return frame

    def __iter__(self) -> Iterator[Frame]:
        self._thread = threading.Thread(target=self._reader, name="edgekit-capture", daemon=True)
        self._thread.start()
        try:
            while (frame := self._take()) is not None:
                yield frame
        finally:
            self._stop_reader()

    def _stop_reader(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()  # a read in progress ends within one frame (or a URL's read timeout)

    def close(self) -> None:
        """Stop the reader, wait for it, then release the capture it was reading from (in that order:
        releasing a VideoCapture under a read in progress can crash the process)."""
        self._stop_reader()
        if self.capture is not None:
            self.capture.release()
