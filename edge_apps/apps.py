"""What the pipeline does with each frame: the apps.

- ``classify``: the whole frame (or, with a face detector, the largest face) -> classifier -> smoothing.
- ``attend``: largest face -> crop -> binary attentive/not-attentive classifier -> mean over the last N frames
  (5 by default); a window in which more than half of the frames had no face is "not attentive", score 0.
- ``driver``: the whole cabin image -> 10-class distraction classifier (State Farm classes) -> smoothing; an
  alert when a distracted class persists past a threshold time; and, from the face, eye closure per frame ->
  PERCLOS (share of closed-eye frames) over a time window with its own drowsiness alert.

Each app returns an :class:`Analysis` for the overlay and a list of events (alerts raised and cleared).
Time is the frame's source time (video time for files, seconds since start for live sources), so a video
file gives the same alerts however fast it is processed.
"""
from __future__ import annotations

import time
from collections import defaultdict, deque
from contextlib import contextmanager
from dataclasses import dataclass, field

import numpy as np

from edgekit.edge_apps.faces import Box, HaarEyeDetector, largest
from edgekit.edge_apps.smoothing import Smoother, probabilities
from edgekit.core.errors import BadInputError
from edgekit.core.spec import preprocess

# State Farm Distracted Driver Detection: folder names c0..c9 and what they mean.
DRIVER_CLASSES = {
    "c0": "safe driving", "c1": "texting - right", "c2": "phone - right", "c3": "texting - left",
    "c4": "phone - left", "c5": "operating the radio", "c6": "drinking", "c7": "reaching behind",
    "c8": "hair and makeup", "c9": "talking to passenger",
}


class Timer:
    """Per-stage durations in seconds; ``with timer("infer"): ...``."""

    def __init__(self):
        self.times: dict[str, list[float]] = defaultdict(list)

    @contextmanager
    def __call__(self, stage: str):
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.times[stage].append(time.perf_counter() - t0)


@dataclass
class Analysis:
    label: str
    score: float
    boxes: list[Box] = field(default_factory=list)  # regions drawn on the overlay (faces, eyes)
    alerts: tuple[str, ...] = ()  # alerts active on this frame
    info: dict = field(default_factory=dict)  # extra figures for the overlay and events (e.g. PERCLOS)


class Classifier:
    """The model plus its preprocessing: image -> class probabilities, each stage timed."""

    def __init__(self, runtime, timer: Timer):
        self.runtime, self.timer, self.spec = runtime, timer, runtime.spec
        self.inferences = 0

    def prepare(self, image: np.ndarray) -> np.ndarray:
        """The model's input for one image (the pipeline may call this on its reader thread)."""
        with self.timer("preprocess"):
            return preprocess(image, self.spec, source_color="BGR")[None]

    def __call__(self, image: np.ndarray, prepared: np.ndarray | None = None) -> np.ndarray:
        x = self.prepare(image) if prepared is None else prepared
        with self.timer("infer"):
            logits = self.runtime.infer(x)[0]
        self.inferences += 1
        return probabilities(logits, self.spec.binary)


class ClassifyApp:
    name = "classify"

    def __init__(self, runtime, timer: Timer, smoother: Smoother, faces=None, margin: float = 0.2):
        self.classify, self.timer, self.smoother = Classifier(runtime, timer), timer, smoother
        self.labels, self.faces, self.margin = runtime.spec.labels, faces, margin
        self.face_search = {"searched": 0, "found": 0}  # frames searched for a face, frames with one

    def find_face(self, image: np.ndarray, detector=None) -> Box | None:
        with self.timer("roi"):
            face = largest((detector or self.faces).detect(image))
        self.face_search["searched"] += 1
        self.face_search["found"] += face is not None
        return face

    def region(self, image: np.ndarray) -> tuple[np.ndarray | None, Box | None]:
        """The largest face (expanded by ``margin``) when a detector is set, else the whole frame."""
        if self.faces is None:
            return image, None
        face = self.find_face(image)
        if face is None:
            return None, None
        box = face.expand(self.margin, image.shape[1], image.shape[0])
        return box.crop(image), box

    @property
    def prepare(self):
        """Whole-frame apps can preprocess ahead, on the reader thread; with a face ROI the input depends on
        the detection, so there is nothing to do ahead."""
        return self.classify.prepare if self.faces is None else None

    def analyze(self, image: np.ndarray, t: float, prepared: np.ndarray | None = None) -> tuple[Analysis, list[dict]]:
        crop, box = self.region(image)
        if crop is None:
            return Analysis("no face", 0.0), []
        probs = self.classify(crop, prepared if box is None else None)
        with self.timer("smooth"):
            label, smoothed = self.smoother.update(probs)
        return Analysis(self.labels[label], float(smoothed[label]), [box] if box else []), []


class AttendApp(ClassifyApp):
    """Attentiveness from the largest face, averaged over the last ``window`` frames."""

    name = "attend"

    def __init__(self, runtime, timer: Timer, faces, window: int = 5, positive: str | None = None,
                 margin: float = 0.2):
        labels = runtime.spec.labels
        if len(labels) != 2:
            raise BadInputError(f"--app attend needs a binary (2-class) attentiveness model; this one has "
                                f"{len(labels)} classes")
        if faces is None:
            raise BadInputError("--app attend needs a face detector (--faces haar or a cascade .xml)")
        if positive is not None and positive not in labels:
            raise BadInputError(f"--positive {positive!r} is not one of the model's labels {list(labels)}")
        super().__init__(runtime, timer, Smoother("none", 0, 1), faces, margin)
        self.positive = labels.index(positive) if positive else default_positive(labels)
        self.window: deque = deque(maxlen=window)

    def analyze(self, image: np.ndarray, t: float, prepared: np.ndarray | None = None) -> tuple[Analysis, list[dict]]:
        crop, box = self.region(image)
        self.window.append(None if crop is None else float(self.classify(crop)[self.positive]))
        with self.timer("smooth"):
            scores = [s for s in self.window if s is not None]
            no_face = len(self.window) - len(scores)
            score = 0.0 if no_face > len(self.window) / 2 else float(np.mean(scores))
        return Analysis("attentive" if score >= 0.5 else "not attentive", score, [box] if box else [],
                        info={"faces_in_window": len(scores)}), []


def default_positive(labels: tuple[str, ...]) -> int:
    """The attentive class: a label named attentive / engaged (any case), else the second label (the
    positive class of a one-logit binary model)."""
    names = [label.lower() for label in labels]
    for name in ("attentive", "engaged"):
        if name in names:
            return names.index(name)
    return 1


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
