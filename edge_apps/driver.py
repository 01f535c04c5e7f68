"""The driver monitor: distraction from the whole cabin image, drowsiness from eye closure (PERCLOS).

The classifier sees the whole cabin (10 State Farm classes); a distracted class that persists past
``alert_after`` seconds raises an alert. From the largest face, the eyes found per frame give eye closure;
PERCLOS, the share of closed-eye frames over a time window, raises the drowsiness alert.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from edgekit.core.errors import BadInputError
from edgekit.edge_apps.apps import Analysis, AppSettings, ClassifyApp, Timer
from edgekit.edge_apps.faces import HaarEyeDetector
from edgekit.edge_apps.smoothing import Smoother

# State Farm Distracted Driver Detection: folder names c0..c9 and what they mean.
DRIVER_CLASSES = {
    "c0": "safe driving", "c1": "texting - right", "c2": "phone - right", "c3": "texting - left",
    "c4": "phone - left", "c5": "operating the radio", "c6": "drinking", "c7": "reaching behind",
    "c8": "hair and makeup", "c9": "talking to passenger",
}


class AlertTimer:
    """Raises an alert once a condition has held for ``after`` seconds, clears it when the condition ends."""

    def __init__(self, name: str, after: float):
        self.name, self.after = name, after
        self.since: float | None = None
        self.active = False

    def update(self, condition: bool, t: float, **details) -> list[dict]:
        if not condition:
            self.since = None
            if self.active:
                self.active = False
                return [{"type": "alert_end", "alert": self.name, **details}]
            return []
        if self.since is None:
            self.since = t
        if not self.active and t - self.since >= self.after:
            self.active = True
            return [{"type": "alert", "alert": self.name, "for_s": round(t - self.since, 2), **details}]
        return []


class Perclos:
    """Share of frames with closed eyes over the last ``seconds`` (frames without a face do not count)."""

    def __init__(self, seconds: float):
        self.seconds = seconds
        self.samples: deque = deque()

    def update(self, closed: bool | None, t: float) -> float | None:
        if closed is not None:
            self.samples.append((t, closed))
        while self.samples and t - self.samples[0][0] > self.seconds:
            self.samples.popleft()
        if not self.samples:
            return None
        return sum(c for _, c in self.samples) / len(self.samples)

    def covered(self, t: float) -> float:
        """Seconds of history in the window (no drowsiness verdict from a second of data)."""
        return t - self.samples[0][0] if self.samples else 0.0


class DriverApp(ClassifyApp):
    name = "driver"
    default_faces = "haar"  # for the eyes only

    @classmethod
    def from_settings(cls, runtime, timer: Timer, faces, settings: AppSettings) -> "DriverApp":
        return cls(runtime, timer, settings.smoother(), faces, safe_label=settings.safe_label,
                   alert_after=settings.alert_after, perclos_seconds=settings.perclos_seconds,
                   perclos_threshold=settings.perclos_threshold)

    def __init__(self, runtime, timer: Timer, smoother: Smoother, faces, safe_label: str | None = None,
                 alert_after: float = 2.0, perclos_seconds: float = 30.0, perclos_threshold: float = 0.3,
                 eyes: HaarEyeDetector | None = None):
        super().__init__(runtime, timer, smoother, faces=None)
        self.face_detector = faces  # used for the eyes only: the classifier sees the whole cabin
        self.names = [DRIVER_CLASSES.get(label, label) for label in self.labels]
        if safe_label is None:
            safe = [i for i, label in enumerate(self.labels) if label == "c0" or "safe" in label.lower()]
            if not safe:
                raise BadInputError(f"--app driver: which class is safe driving? none of {list(self.labels)} is "
                                    f"'c0' or contains 'safe'; pass --safe-label")
            self.safe = safe[0]
        elif safe_label in self.labels:
            self.safe = self.labels.index(safe_label)
        else:
            raise BadInputError(f"--safe-label {safe_label!r} is not one of the model's labels {list(self.labels)}")
        self.distraction = AlertTimer("distracted", alert_after)
        self.drowsy = AlertTimer("drowsy", 0.0)
        self.perclos = Perclos(perclos_seconds)
        self.perclos_threshold = perclos_threshold
        self.eyes = eyes if eyes is not None or faces is None else HaarEyeDetector()

    @property
    def prepare(self):
        return self.classify.prepare  # the classifier sees the whole cabin

    def analyze(self, image: np.ndarray, t: float, prepared: np.ndarray | None = None) -> tuple[Analysis, list[dict]]:
        probs = self.classify(image, prepared)
        with self.timer("smooth"):
            label, smoothed = self.smoother.update(probs)
        name = self.names[label]
        events = self.distraction.update(label != self.safe, t, activity=name)
        boxes, closed = [], None
        if self.face_detector is not None:
            face = self.find_face(image, self.face_detector)
            if face is not None:
                with self.timer("eyes"):
                    eyes = self.eyes.detect(image, face)
                boxes, closed = [face, *eyes], not eyes
        perclos = self.perclos.update(closed, t)
        drowsy = (perclos is not None and perclos >= self.perclos_threshold
                  and self.perclos.covered(t) >= min(5.0, self.perclos.seconds / 2))
        events += self.drowsy.update(drowsy, t, perclos=None if perclos is None else round(perclos, 3))
        alerts = tuple(a.name for a in (self.distraction, self.drowsy) if a.active)
        info = {"perclos": None if perclos is None else round(perclos, 3), "eyes_closed": closed}
        return Analysis(name, float(smoothed[label]), boxes, alerts, info), events
