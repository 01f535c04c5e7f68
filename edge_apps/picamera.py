"""The Raspberry Pi Camera Module through Picamera2 (``--source picamera2`` or ``picamera2:N``).

On current Raspberry Pi OS the camera module is driven by libcamera; OpenCV's V4L2 capture usually gets no
frames from it. Picamera2 (Debian package ``python3-picamera2`` on Pi OS) is the official Python library.
``Picamera2Capture`` gives it the small part of ``cv2.VideoCapture``'s interface that
:class:`~edgekit.edge_apps.sources.FrameSource` uses (``read``, ``get``, ``isOpened``, ``release``), so the
camera gets the same reader thread and newest-frame semantics as any other live source.

Only Picamera2's documented calls are used: ``Picamera2(camera_num)``, ``global_camera_info()``,
``create_video_configuration(main={"size": ..., "format": "RGB888"}, controls={"FrameRate": ...})``,
``configure``, ``start``, ``capture_array("main")``, ``stop``, ``close``. "RGB888" arrays are stored in
B, G, R order, which is what OpenCV and edgekit expect. Tested against a stand-in module that follows that
API (tests/fake_picamera2); not yet run on a real camera module.
"""
from __future__ import annotations

import numpy as np

from edgekit.core.errors import BadInputError

PREFIX = "picamera2"
SIZE = (640, 480)
FPS = 30.0


def is_picamera2(source: str) -> bool:
    return source == PREFIX or source.startswith(PREFIX + ":")


def camera_number(source: str) -> int:
    _, _, number = source.partition(":")
    if number and not number.isdigit():
        raise BadInputError(f"--source {source}: expected picamera2 or picamera2:N (a camera number)")
    return int(number or 0)


def available() -> bool:
    from importlib.util import find_spec

    return find_spec("picamera2") is not None


class Picamera2Capture:
    """A started Picamera2 camera, read like a ``cv2.VideoCapture``."""

    def __init__(self, source: str, size: tuple[int, int] = SIZE, fps: float = FPS):
        number = camera_number(source)
        try:
            from picamera2 import Picamera2
        except ImportError:
            raise BadInputError("--source picamera2 needs the Picamera2 library (on Raspberry Pi OS: "
                                "sudo apt install python3-picamera2, and a venv made with "
                                "--system-site-packages)") from None
        cameras = Picamera2.global_camera_info()
        if number >= len(cameras):
            raise BadInputError(f"--source {source}: {len(cameras)} camera(s) found by libcamera")
        self.camera = Picamera2(camera_num=number)
        self.fps, self.size = fps, size
        config = self.camera.create_video_configuration(main={"size": size, "format": "RGB888"},
                                                        controls={"FrameRate": fps})
        self.camera.configure(config)
        self.camera.start()
        self.opened = True

    def isOpened(self) -> bool:  # noqa: N802  (cv2.VideoCapture's name)
        return self.opened

    def read(self) -> tuple[bool, np.ndarray | None]:
        if not self.opened:
            return False, None
        try:
            image = self.camera.capture_array("main")
        except RuntimeError:  # the camera stopped (unplugged, another process took it)
            return False, None
        if image is None or image.ndim != 3 or image.shape[2] < 3:
            return False, None
        return True, np.ascontiguousarray(image[:, :, :3])

    def get(self, prop: int) -> float:
        import cv2

        return {cv2.CAP_PROP_FPS: self.fps, cv2.CAP_PROP_FRAME_WIDTH: float(self.size[0]),
                cv2.CAP_PROP_FRAME_HEIGHT: float(self.size[1])}.get(prop, 0.0)

    def set(self, prop: int, value: float) -> bool:
        return False

    def release(self) -> None:
        if self.opened:
            self.opened = False
            self.camera.stop()
            self.camera.close()
