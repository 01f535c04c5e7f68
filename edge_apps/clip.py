"""``clip``: activity recognition on the last few frames with a clip model (task "clip", edgekit/models/video.py).

Every ``frame_stride``-th frame of the source is preprocessed (on the reader thread when the pipeline can) and
pushed into a ring buffer of the model's ``clip_frames`` frames; once the buffer is full, every ``clip_every``
pushes the buffer becomes one (1, C, T, H, W) clip, the model classifies it, and the smoothed label is the
app's decision until the next one. Between decisions and while the buffer fills, the last decision stands
(``info["decisions"]`` counts them). Stages timed: ``preprocess`` (per frame), ``buffer`` (push and stack),
``infer`` (per clip) and ``smooth``. Frames carry source time, so a video file gives the same decisions
however fast it is processed.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from edgekit.core.errors import BadInputError
from edgekit.core.spec import frame_spec, preprocess
from edgekit.edge_apps.apps import Analysis, AppSettings, Classifier, Timer
from edgekit.edge_apps.smoothing import Smoother


class ClipApp:
    name = "clip"
    default_faces = "none"

    @classmethod
    def from_settings(cls, runtime, timer: Timer, faces, settings: AppSettings) -> "ClipApp":
        if faces is not None:
            raise BadInputError("--app clip classifies the whole frame; leave out --faces (or pass --faces none)")
        return cls(runtime, timer, settings.smoother(), every=settings.clip_every)

    def __init__(self, runtime, timer: Timer, smoother: Smoother, every: int = 1):
        spec = runtime.spec
        if spec.task != "clip":
            raise BadInputError(f"--app clip needs a clip model (task 'clip', e.g. `edgekit train --model "
                                f"mobilenet3d`); {spec.arch} classifies single images: use --app classify")
        self.classify, self.timer, self.smoother = Classifier(runtime, timer), timer, smoother
        self.labels, self.every = spec.labels, every
        self._frames_of, self._frame_spec = None, None  # the running model's spec and its per-frame spec
        self.buffer: deque = deque(maxlen=spec.clip_frames)
        self.seen = 0  # frames analysed
        self.pushed_since = 0  # frames pushed since the last decision
        self.decisions = 0
        self.last = Analysis("(filling clip)", 0.0, info={"decisions": 0, "buffered": 0})
        self.face_search = {"searched": 0, "found": 0}  # no face detector: stays zero

    @property
    def prepare(self):
        return self.prepare_frame

    def prepare_frame(self, image: np.ndarray) -> np.ndarray:
        """One frame as the model's (C, H, W) float32 slice of a clip."""
        spec = self.classify.spec  # a model switched in while running (Classifier.swap) brings its own
        if spec is not self._frames_of:
            self._frames_of, self._frame_spec = spec, frame_spec(spec)
        with self.timer("preprocess"):
            return preprocess(image, self._frame_spec, source_color="BGR")

    def analyze(self, image: np.ndarray, t: float, prepared: np.ndarray | None = None) -> tuple[Analysis, list[dict]]:
        spec = self.classify.spec
        take = self.seen % spec.frame_stride == 0
        self.seen += 1
        if not take:
            return self.last, []
        frame = self.prepare_frame(image) if prepared is None else prepared
        with self.timer("buffer"):
            self.buffer.append(frame)
            self.pushed_since += 1
            ready = len(self.buffer) == spec.clip_frames and (self.decisions == 0 or self.pushed_since >= self.every)
            clip = np.stack(self.buffer, axis=1)[None] if ready else None
        if clip is None:
            self.last.info["buffered"] = len(self.buffer)
            return self.last, []
        probs = self.classify(image, clip)
        self.pushed_since, self.decisions = 0, self.decisions + 1
        with self.timer("smooth"):
            label, smoothed = self.smoother.update(probs)
        self.last = Analysis(self.labels[label], float(smoothed[label]),
                             info={"decisions": self.decisions, "buffered": len(self.buffer)})
        return self.last, []
