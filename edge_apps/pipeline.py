"""The real-time pipeline: source -> preprocess (from the model's spec) -> infer (any runtime) -> smooth ->
events -> overlay -> sinks, with every stage timed.

Metrics: per-stage latency (capture wait, preprocess, infer, smooth, render), glass-to-glass latency (from
the moment a frame was read to the moment its result exists), pipeline FPS against model-only FPS (1 / mean
inference time), frames read / dropped / corrupt, and peak RSS. ``summary()`` returns them as a dict; the
CLI prints them and writes them as JSON.
"""
from __future__ import annotations

import json
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgekit.edge_apps.smoothing import Smoother, probabilities
from edgekit.edge_apps.sources import Frame, FrameSource
from edgekit.hardware import peak_rss_mb
from edgekit.spec import preprocess

STAGES = ("wait", "preprocess", "infer", "smooth", "render")


@dataclass
class PipelineConfig:
    every: int = 1  # run the model on every k-th frame, reuse the last result in between
    max_frames: int = 0  # stop after this many frames (0 = until the source ends)
    overlay: bool = True


@dataclass
class Result:
    label: int
    score: float
    probs: np.ndarray
    fresh: bool  # inferred on this frame (False: reused, see --every)


class JsonlEvents:
    """One JSON object per line; flushed per event, so an interrupted run loses nothing already written."""

    def __init__(self, path: Path):
        self.path = path
        self.file = open(path, "w", encoding="utf-8")

    def write(self, event: dict) -> None:
        self.file.write(json.dumps(event) + "\n")
        self.file.flush()

    def close(self) -> None:
        self.file.close()


class VideoSink:
    """Annotated frames to a Motion-JPEG .avi (plays everywhere, needs no codec licence)."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.writer = path, fps if fps > 0 else 25.0, None

    def write(self, image: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            height, width = image.shape[:2]
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"MJPG"), self.fps, (width, height))
        self.writer.write(image)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


@dataclass
class Pipeline:
    runtime: object  # an edgekit.runtimes Runtime
    smoother: Smoother
    config: PipelineConfig = field(default_factory=PipelineConfig)
    events: JsonlEvents | None = None
    video: VideoSink | None = None
    times: dict = field(default_factory=lambda: defaultdict(list))
    glass_to_glass: list = field(default_factory=list)
    frames: int = 0
    inferences: int = 0

    def run(self, source: FrameSource) -> dict:
        start = time.perf_counter()
        last: Result | None = None
        label_before = None
        iterator = iter(source)
        try:
            while not self.config.max_frames or self.frames < self.config.max_frames:
                t0 = time.perf_counter()
                frame = next(iterator, None)
                if frame is None:
                    break
                self.times["wait"].append(time.perf_counter() - t0)
                if last is None or self.frames % self.config.every == 0:
                    last = self._infer(frame)
                else:
                    last = Result(last.label, last.score, last.probs, fresh=False)
                self.glass_to_glass.append(time.monotonic() - frame.captured)
                if self.events is not None and last.label != label_before:
                    self.events.write({"type": "label", "frame": frame.index, "time": round(time.time(), 3),
                                       "label": self.labels[last.label], "score": round(last.score, 4)})
                    label_before = last.label
                if self.video is not None:
                    t0 = time.perf_counter()
                    self.video.write(self._render(frame, last))
                    self.times["render"].append(time.perf_counter() - t0)
                self.frames += 1
        finally:
            self.seconds = time.perf_counter() - start
            for sink in (self.events, self.video):
                if sink is not None:
                    sink.close()
        return self.summary(source)

    @property
    def labels(self) -> tuple[str, ...]:
        return self.runtime.spec.labels

    def _infer(self, frame: Frame) -> Result:
        spec = self.runtime.spec
        t0 = time.perf_counter()
        x = preprocess(frame.image, spec, source_color="BGR")[None]
        t1 = time.perf_counter()
        logits = self.runtime.infer(x)[0]
        t2 = time.perf_counter()
        label, smoothed = self.smoother.update(probabilities(logits, spec.binary))
        t3 = time.perf_counter()
        for stage, seconds in (("preprocess", t1 - t0), ("infer", t2 - t1), ("smooth", t3 - t2)):
            self.times[stage].append(seconds)
        self.inferences += 1
        return Result(label, float(smoothed[label]), smoothed, fresh=True)

    def _render(self, frame: Frame, result: Result) -> np.ndarray:
        import cv2

        image = frame.image.copy()
        if self.config.overlay:
            infer_ms = 1e3 * float(np.mean(self.times["infer"][-30:])) if self.times["infer"] else 0.0
            text = f"{self.labels[result.label]} {result.score:.2f}"
            cv2.putText(image, text, (8, 24), cv2.FONT_HERSHEY_SIMPLEX, 0.7, (0, 255, 0), 2, cv2.LINE_AA)
            cv2.putText(image, f"infer {infer_ms:.1f} ms", (8, 48), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (0, 255, 255), 1,
                        cv2.LINE_AA)
        return image

    def summary(self, source: FrameSource) -> dict:
        def stats(values):
            if not values:
                return None
            ms = np.asarray(values) * 1e3
            return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
                    "mean_ms": float(ms.mean()), "count": int(len(ms))}

        infer = stats(self.times["infer"])
        return {
            "frames": self.frames, "inferences": self.inferences, "seconds": self.seconds,
            "pipeline_fps": self.frames / self.seconds if self.seconds > 0 else 0.0,
            "model_only_fps": 1e3 / infer["mean_ms"] if infer else None,
            "stages": {s: stats(self.times[s]) for s in STAGES if self.times[s]},
            "glass_to_glass": stats(self.glass_to_glass),
            "source": {"name": source.source, "live": source.live, "read": source.stats.read,
                       "dropped": source.stats.dropped, "corrupt": source.stats.corrupt, "error": source.error},
            "peak_rss_mb": peak_rss_mb(), "runtime": self.runtime.describe(),
        }


def format_summary(summary: dict) -> str:
    lines = [f"{summary['frames']} frames in {summary['seconds']:.1f} s: pipeline {summary['pipeline_fps']:.1f} FPS, "
             f"model only {summary['model_only_fps'] or 0:.1f} FPS ({summary['inferences']} inferences)"]
    for stage, s in summary["stages"].items():
        lines.append(f"  {stage:<11} p50 {s['p50_ms']:7.2f} ms  p90 {s['p90_ms']:7.2f} ms")
    g = summary["glass_to_glass"]
    if g:
        lines.append(f"  {'glass-glass':<11} p50 {g['p50_ms']:7.2f} ms  p90 {g['p90_ms']:7.2f} ms")
    src = summary["source"]
    lines.append(f"source {src['name']}: read {src['read']}, dropped {src['dropped']}, corrupt {src['corrupt']}"
                 + (f"; {src['error']}" if src["error"] else "")
                 + (f"; peak RSS {summary['peak_rss_mb']:.0f} MB" if summary["peak_rss_mb"] else ""))
    return "\n".join(lines)
