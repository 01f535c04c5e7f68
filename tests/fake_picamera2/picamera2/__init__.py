"""A stand-in for the Picamera2 library (Raspberry Pi camera modules through libcamera), following its
documented API, so edgekit's adapter can be tested off a Pi: one camera, frames paced at the configured
frame rate, "RGB888" arrays in B, G, R order. Tests put this folder on PYTHONPATH."""
import time

import numpy as np


class Picamera2:
    @staticmethod
    def global_camera_info():
        return [{"Model": "fake_imx708", "Location": 2, "Rotation": 0, "Id": "/base/fake", "Num": 0}]

    def __init__(self, camera_num=0):
        if camera_num >= len(self.global_camera_info()):
            raise IndexError("no such camera")
        self.config = None
        self.started = False
        self.closed = False
        self.frames = 0
        self.last = 0.0

    def create_video_configuration(self, main=None, controls=None, **kwargs):
        main = {"size": (640, 480), "format": "XBGR8888", **(main or {})}
        return {"main": main, "controls": {"FrameRate": 30.0, **(controls or {})}}

    def configure(self, config):
        if self.started:
            raise RuntimeError("Camera must be stopped before configuring")
        self.config = config

    def start(self):
        if self.config is None:
            raise RuntimeError("Camera has not been configured")
        self.started = True

    def capture_array(self, name="main"):
        if not self.started:
            raise RuntimeError("Camera is not running")
        period = 1.0 / self.config["controls"]["FrameRate"]
        time.sleep(max(0.0, self.last + period - time.monotonic()))
        self.last = time.monotonic()
        width, height = self.config["main"]["size"]
        channels = 3 if self.config["main"]["format"] in ("RGB888", "BGR888") else 4
        image = np.zeros((height, width, channels), np.uint8)
        image[:, :, 0] = (self.frames * 7) % 256  # blue channel moves, so frames differ
        image[height // 4: height // 2, width // 4: width // 2, 2] = 200
        self.frames += 1
        return image

    def stop(self):
        self.started = False

    def close(self):
        self.closed = True
