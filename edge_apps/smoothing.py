"""Temporal smoothing of per-frame class probabilities, so labels do not flicker frame to frame.

- ``window:N``: mean of the last N probability vectors (the reference designs' N-frame average).
- ``ema:A``: exponential moving average, weight A on the newest frame.
- ``none``: the raw per-frame probabilities.
Every smoother also applies hysteresis: the reported label changes only after a new class has been on top
for ``hold`` consecutive frames.
"""
from __future__ import annotations

from collections import deque

import numpy as np

from edgekit.core.errors import BadInputError


class Smoother:
    def __init__(self, kind: str = "window", value: float = 5, hold: int = 3):
        if kind not in ("window", "ema", "none"):
            raise BadInputError(f"--smooth must be window:N, ema:ALPHA or none, got {kind!r}")
        if kind == "window" and (value < 1 or value != int(value)):
            raise BadInputError(f"window:N needs a whole N >= 1, got {value}")
        if kind == "ema" and not 0 < value <= 1:
            raise BadInputError(f"ema:ALPHA needs 0 < ALPHA <= 1, got {value}")
        if hold < 1:
            raise BadInputError(f"hold must be >= 1, got {hold}")
        self.kind, self.value, self.hold = kind, value, hold
        self.window: deque = deque(maxlen=int(value) if kind == "window" else 1)
        self.ema: np.ndarray | None = None
        self.label: int | None = None
        self._candidate, self._streak = None, 0

    @classmethod
    def parse(cls, text: str, hold: int = 3) -> "Smoother":
        kind, _, value = text.partition(":")
        try:
            return cls(kind, float(value) if value else (5 if kind == "window" else 0.3), hold)
        except ValueError:
            raise BadInputError(f"--smooth must be window:N, ema:ALPHA or none, got {text!r}") from None

    def update(self, probs: np.ndarray) -> tuple[int, np.ndarray]:
        """Feed one frame's probabilities; returns (reported label, smoothed probabilities)."""
        if self.kind == "window":
            self.window.append(probs)
            smoothed = np.mean(self.window, axis=0)
        elif self.kind == "ema":
            self.ema = probs if self.ema is None else self.value * probs + (1 - self.value) * self.ema
            smoothed = self.ema
        else:
            smoothed = probs
        top = int(np.argmax(smoothed))
        if self.label is None:
            self.label = top
        elif top != self.label:
            self._streak = self._streak + 1 if top == self._candidate else 1
            self._candidate = top
            if self._streak >= self.hold:
                self.label, self._candidate, self._streak = top, None, 0
        else:
            self._candidate, self._streak = None, 0
        return self.label, smoothed


def probabilities(logits: np.ndarray, binary: bool) -> np.ndarray:
    """Softmax (or, for one logit, [1 - sigmoid, sigmoid]) of one logit vector."""
    logits = np.asarray(logits, np.float64).reshape(-1)
    if binary:
        p = 1.0 / (1.0 + np.exp(-logits[0]))
        return np.array([1.0 - p, p])
    shifted = np.exp(logits - logits.max())
    return shifted / shifted.sum()
