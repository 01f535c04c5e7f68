"""What the pipeline does with each frame: the :class:`App` protocol, the app registry and the apps.

- ``classify``: the whole frame (or, with a face detector, the largest face) -> classifier -> smoothing.
- ``attend``: largest face -> crop -> binary attentive/not-attentive classifier -> mean over the last N frames
  (5 by default); a window in which more than half of the frames had no face is "not attentive", score 0.
- ``clip``: (edge_apps/clip.py) a clip model on a ring buffer of the last frames -> smoothing; a decision
  every N frames.
- ``driver``: the whole cabin image -> 10-class distraction classifier (State Farm classes) -> smoothing; an
  alert when a distracted class persists past a threshold time; and, from the face, eye closure per frame ->
  PERCLOS (share of closed-eye frames) over a time window with its own drowsiness alert.

Each app returns an :class:`Analysis` for the overlay and a list of events (alerts raised and cleared).
Apps are chosen by name from :data:`APPS` (``module:Class``, imported on first use, like the runtimes), built
from one validated :class:`AppSettings`; a new app is a class with ``from_settings`` and one line there.
Time is the frame's source time (video time for files, seconds since start for live sources), so a video
file gives the same alerts however fast it is processed.
"""
from __future__ import annotations

import importlib
import time
from collections import defaultdict, deque
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Protocol, runtime_checkable

import numpy as np

from edgekit.core import checks
from edgekit.core.errors import BadInputError, UnknownNameError
from edgekit.core.metrics import default_positive
from edgekit.core.spec import preprocess
from edgekit.edge_apps.faces import Box, largest
from edgekit.edge_apps.smoothing import Smoother, probabilities

# name -> "module:Class"; imported when chosen.
APPS = {
    "classify": "edgekit.edge_apps.apps:ClassifyApp",
    "attend": "edgekit.edge_apps.apps:AttendApp",
    "driver": "edgekit.edge_apps.driver:DriverApp",
    "clip": "edgekit.edge_apps.clip:ClipApp",
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


@dataclass(frozen=True)
class AppSettings:
    """Everything an app may be tuned with (each app reads its own fields), checked when built."""

    smooth: str = "window:5"  # classify/driver: window:N, ema:ALPHA or none
    hold: int = 3  # frames a new label must stay on top before it is reported
    window: int = 5  # attend: frames averaged per decision
    positive: str | None = None  # attend: the attentive label (default: the model's recorded positive label)
    safe_label: str | None = None  # driver: the safe-driving label (default: c0 or a label with "safe")
    alert_after: float = 2.0  # driver: seconds of distraction before an alert
    perclos_seconds: float = 30.0  # driver: PERCLOS window
    perclos_threshold: float = 0.3  # driver: closed-eye share that raises the drowsiness alert
    margin: float = 0.2  # face box expansion before cropping
    clip_every: int = 1  # clip: a decision every N frames pushed into the clip buffer

    def __post_init__(self) -> None:
        Smoother.parse(self.smooth, self.hold)  # refuses a bad --smooth / --hold
        checks.within("--hold", self.hold, 1, 10_000)
        checks.within("--window", self.window, 1, 10_000)
        checks.within("--alert-after", self.alert_after, 0, 86_400)
        checks.within("--perclos-seconds", self.perclos_seconds, 0, 86_400, low_open=True)
        checks.within("--perclos-threshold", self.perclos_threshold, 0, 1)
        checks.within("--margin", self.margin, 0, 4)
        checks.within("--clip-every", self.clip_every, 1, 10_000)

    def smoother(self) -> Smoother:
        return Smoother.parse(self.smooth, self.hold)


@runtime_checkable
class App(Protocol):
    """What :class:`~edgekit.edge_apps.pipeline.Pipeline` calls on an app, per frame and at the end."""

    name: str
    classify: "Classifier"  # the model with its preprocessing; the summary reads its inference count
    face_search: dict  # {"searched": frames searched for a face, "found": frames with one}

    @property
    def prepare(self) -> Callable[[np.ndarray], np.ndarray] | None:
        """The model input for a frame, computed ahead on the reader thread; None when it depends on the
        analysis (a face crop)."""

    def analyze(self, image: np.ndarray, t: float, prepared: np.ndarray | None = None) -> tuple["Analysis", list[dict]]:
        """One frame (BGR, source time ``t`` in seconds) -> what to draw and the events it raised."""


def app_class(name: str) -> type:
    """The app class registered as ``name`` (imported now); unknown names suggest the closest one."""
    if name not in APPS:
        raise UnknownNameError("app", name, APPS)
    module, cls = APPS[name].split(":")
    return getattr(importlib.import_module(module), cls)


def build_app(name: str, runtime, timer: "Timer", faces, settings: AppSettings | None = None) -> App:
    """The app ``name`` on ``runtime``, with a face detector (or None) and ``settings``."""
    if runtime.spec.task == "clip" and name != "clip":
        raise BadInputError(f"{runtime.spec.arch} is a clip model ({runtime.spec.clip_frames} frames a decision): "
                            "run it with --app clip")
    app = app_class(name).from_settings(runtime, timer, faces, settings or AppSettings())
    if not isinstance(app, App):
        raise TypeError(f"{type(app).__name__} does not implement the App protocol")
    return app


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
        if not np.isfinite(logits).all():
            raise BadInputError("the model gives NaN or infinite outputs: its weights or spec are broken "
                                "(check it with `edgekit verify`)")
        self.inferences += 1
        return probabilities(logits, self.spec.binary)

    def swap(self, runtime) -> None:
        """Use ``runtime`` from the next frame on (a model rolled out while running); it must take the same
        input and give the same labels, else BadInputError and nothing changes. Returns nothing; the caller
        closes the runtime it replaced."""
        new, old = runtime.spec, self.spec
        if list(new.labels) != list(old.labels) or new.input_shape(1) != old.input_shape(1) or \
                new.binary != old.binary:
            raise BadInputError(f"the new model's labels or input ({list(new.labels)[:4]}..., "
                                f"{new.input_shape(1)}) are not the running one's; not switched")
        self.runtime, self.spec = runtime, new


class ClassifyApp:
    name = "classify"
    default_faces = "none"  # the whole frame, unless a detector is asked for

    @classmethod
    def from_settings(cls, runtime, timer: Timer, faces, settings: AppSettings) -> "ClassifyApp":
        return cls(runtime, timer, settings.smoother(), faces=faces, margin=settings.margin)

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
    default_faces = "haar"

    @classmethod
    def from_settings(cls, runtime, timer: Timer, faces, settings: AppSettings) -> "AttendApp":
        return cls(runtime, timer, faces, window=settings.window, positive=settings.positive, margin=settings.margin)

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
        # the model's recorded positive label (`train --positive`), else one named like "attentive"
        positive = positive or runtime.spec.positive or default_positive(labels)
        self.positive = labels.index(positive)
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
