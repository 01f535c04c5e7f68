"""The real-time pipeline: source -> [resize] -> app (face ROI, preprocess, infer, smooth) -> events ->
overlay -> sinks, with every stage timed.

Three threads share the work so that, on a small CPU, the model is the only thing the frame rate waits for:
the source's reader thread decodes ahead, the main thread runs the app, and a sink thread renders the
overlay and writes the video / MJPEG stream / window. Queues between them are short and bounded.

Switchable savings (each measured by ``benchmarks/scripts/pipeline_overhead.py``): ``every`` (run the model on
every k-th frame, reuse the result in between), ``motion_gate`` (reuse the result while the picture has
not changed: mean absolute grey-level change of a 64x48 thumbnail below the threshold) and ``scale``
(shrink frames before anything else touches them).

Metrics: per-stage latency, glass-to-glass latency (frame read -> its result exists), pipeline FPS vs
model-only FPS (1 / mean inference time), frames read / dropped / corrupt, peak RSS; in the overlay, in
``/status.json`` when streaming, and in ``summary()``.
"""
from __future__ import annotations

import queue
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable

import numpy as np

from edgekit.edge_apps.apps import Analysis, App, Timer
from edgekit.edge_apps.sources import Frame, FrameSource
from edgekit.core import checks
from edgekit.core.errors import BadInputError
from edgekit.core.hardware import peak_rss_mb
from edgekit.core import jsonio


@dataclass(frozen=True)
class PipelineConfig:
    every: int = 1  # run the app on every k-th frame, reuse the last result in between
    max_frames: int = 0  # stop after this many frames (0 = until the source ends)
    motion_gate: float = 0.0  # 0 = off; else reuse the last result while the frame changes less than this
    scale: float = 1.0  # resize every frame by this factor first
    overlay: bool = True
    reduced_decode: bool = True  # MJPEG videos decoded at 1/2, 1/4 or 1/8 when the model needs no more

    def __post_init__(self) -> None:
        checks.within("--every", self.every, 1, 10_000)
        checks.at_least("--max-frames", self.max_frames, 0)
        checks.within("--motion-gate", self.motion_gate, 0, 255)
        checks.within("--scale", self.scale, 0, 4, low_open=True)


class JsonlEvents:
    """One JSON object per line; flushed per event, so an interrupted run loses nothing already written."""

    def __init__(self, path: Path):
        self.path, self.failed = path, False
        try:
            self.file = open(path, "w", encoding="utf-8")
        except OSError as exc:
            raise BadInputError(f"cannot write {path}: {exc.strerror}") from None

    def write(self, event: dict) -> None:
        try:
            self.file.write(jsonio.dumps(event) + "\n")
            self.file.flush()
        except OSError as exc:  # a full disk: one clean error; the pipeline still closes its sinks in order
            self.failed = True
            raise BadInputError(f"cannot write {self.path}: {exc.strerror}") from None

    def close(self) -> None:
        try:
            self.file.close()
        except OSError:
            pass  # the write that failed already raised its error; closing must not hide it
        if self.failed and self.path.stat().st_size == 0:
            self.path.unlink()  # nothing was ever written: no empty file that looks like a run without events


class VideoSink:
    """Annotated frames to a Motion-JPEG .avi (plays everywhere, needs no codec licence)."""

    def __init__(self, path: Path, fps: float):
        self.path, self.fps, self.writer = path, fps if fps > 0 else 25.0, None
        self.size: tuple[int, int] | None = None  # (width, height) of the first frame: the video's size
        self.resized = 0  # frames of another size, fitted to it (OpenCV's writer silently drops them)
        self.frames = 0

    def write(self, image: np.ndarray) -> None:
        import cv2

        if self.writer is None:
            height, width = image.shape[:2]
            self.size = (width, height)
            self.writer = cv2.VideoWriter(str(self.path), cv2.VideoWriter_fourcc(*"MJPG"), self.fps, (width, height))
        if (image.shape[1], image.shape[0]) != self.size:
            image = cv2.resize(image, self.size, interpolation=cv2.INTER_AREA)
            self.resized += 1
        if image.ndim == 2:
            image = cv2.cvtColor(image, cv2.COLOR_GRAY2BGR)
        self.writer.write(image)
        self.frames += 1

    def report(self) -> dict:
        return {"path": str(self.path), "frames": self.frames, "resized": self.resized,
                "size": list(self.size) if self.size else None}

    def close(self) -> None:
        if self.writer is not None:
            self.writer.release()


class WindowSink:
    """An OpenCV window; needs a display and an OpenCV build with GUI support. ``q`` or Esc stops the run."""

    def __init__(self, title: str = "edgekit"):
        import os

        import cv2

        self.title, self.quit = title, False
        if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
            raise BadInputError("--show needs a display (DISPLAY is not set); use --serve :8080 to watch in a browser")
        try:
            cv2.namedWindow(title, cv2.WINDOW_NORMAL)
        except cv2.error:
            raise BadInputError("--show needs OpenCV with GUI support (opencv-python-headless has none: "
                                "pip install opencv-python); or use --serve :8080 to watch in a browser") from None

    def write(self, image: np.ndarray) -> None:
        import cv2

        cv2.imshow(self.title, image)
        if cv2.waitKey(1) & 0xFF in (ord("q"), 27):
            self.quit = True

    def close(self) -> None:
        import cv2

        cv2.destroyWindow(self.title)


class StreamSink:
    """Frames to an :class:`~edgekit.edge_apps.stream.MjpegServer` as JPEG, with a status dict. While nobody
    watches the stream, a frame is drawn and encoded only every IDLE_SECONDS (for /frame.jpg): on a Pi the
    JPEG encoding of every frame for no viewer would cost more than a small model."""

    IDLE_SECONDS = 1.0

    def __init__(self, server, quality: int = 80):
        self.server, self.quality = server, quality
        self.encoded_at = -float("inf")

    def wants_frame(self) -> bool:
        return self.server.viewers > 0 or time.monotonic() - self.encoded_at >= self.IDLE_SECONDS

    def write(self, image: np.ndarray) -> None:
        import cv2

        self.encoded_at = time.monotonic()
        ok, jpeg = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_QUALITY, self.quality])
        if ok:
            self.server.publish(jpeg.tobytes())

    def close(self) -> None:
        self.server.close()


def render(frame: Frame, analysis: Analysis, line: str) -> np.ndarray:
    """The frame with boxes, label, score, active alerts and a metrics line drawn on it."""
    import cv2

    image = frame.image.copy()
    alert = bool(analysis.alerts)
    colour = (0, 0, 255) if alert else (0, 200, 0)
    for i, box in enumerate(analysis.boxes):
        cv2.rectangle(image, (box.x, box.y), (box.x + box.w, box.y + box.h), colour if i == 0 else (255, 200, 0), 2)
    font = cv2.FONT_HERSHEY_SIMPLEX
    text = f"{analysis.label} {analysis.score:.2f}" + ("  ALERT: " + ", ".join(analysis.alerts) if alert else "")
    cv2.putText(image, text, (8, 24), font, 0.7, (0, 0, 0), 4, cv2.LINE_AA)
    cv2.putText(image, text, (8, 24), font, 0.7, colour, 2, cv2.LINE_AA)
    cv2.putText(image, line, (8, image.shape[0] - 10), font, 0.45, (0, 255, 255), 1, cv2.LINE_AA)
    return image


class SinkThread:
    """Renders and writes on its own thread. The queue is short and ``submit`` blocks when it is full, so a
    video file gets every frame; a slow sink slows the run rather than eating memory."""

    def __init__(self, sinks: list, timer: Timer, overlay: bool = True):
        self.sinks, self.timer, self.overlay = sinks, timer, overlay
        self.queue: queue.Queue = queue.Queue(maxsize=4)
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._loop, name="edgekit-sinks", daemon=True)
        self.thread.start()

    @property
    def quit(self) -> bool:
        return any(getattr(s, "quit", False) for s in self.sinks) or self.error is not None

    def submit(self, frame: Frame, analysis: Analysis, line: str, status: dict) -> None:
        if self.error is not None:
            raise self.error
        self.queue.put((frame, analysis, line, status))

    def _loop(self) -> None:
        while (item := self.queue.get()) is not None:
            frame, analysis, line, status = item
            try:
                for sink in self.sinks:
                    if isinstance(sink, StreamSink):
                        sink.server.set_status(status)  # every frame, encoded or not
                wanted = [sink for sink in self.sinks if getattr(sink, "wants_frame", lambda: True)()]
                if not wanted:
                    continue  # nobody watches the stream and no file or window takes this frame
                with self.timer("render"):
                    image = render(frame, analysis, line) if self.overlay else frame.image
                    for sink in wanted:
                        sink.write(image)
            except Exception as exc:  # handed to the main thread, which re-raises it on the next submit
                self.error = exc
                return

    def close(self) -> None:
        """Drain what is queued, then close every sink (the video file is finalised here)."""
        if self.thread.is_alive():
            self.queue.put(None)
            self.thread.join()
        for sink in self.sinks:
            sink.close()


STAGES = ("wait", "resize", "gate", "roi", "eyes", "preprocess", "buffer", "infer", "smooth", "render")


def recent_stages(times: dict[str, list[float]], window: int = 200) -> dict:
    """p50/p90 in ms of the last ``window`` values of each list: the present state of a running pipeline,
    not its whole history. Safe to call from another thread than the appender's: it reads slices only."""
    stages = {}
    for stage, values in list(times.items()):
        recent = values[-window:]
        if recent:
            ms = np.asarray(recent) * 1e3
            stages[stage] = {"p50_ms": round(float(np.percentile(ms, 50)), 3),
                             "p90_ms": round(float(np.percentile(ms, 90)), 3)}
    return stages


def stage_order(stage: str) -> int:
    return STAGES.index(stage) if stage in STAGES else len(STAGES)


def thumbnail(image: np.ndarray) -> np.ndarray:
    import cv2

    return cv2.cvtColor(cv2.resize(image, (64, 48), interpolation=cv2.INTER_AREA), cv2.COLOR_BGR2GRAY).astype(np.int16)


@dataclass
class Pipeline:
    app: App  # analyze(image, t, prepared) -> (Analysis, events); prepare or None (edge_apps.apps.App)
    timer: Timer
    config: PipelineConfig = field(default_factory=PipelineConfig)
    events: JsonlEvents | None = None
    sinks: list = field(default_factory=list)
    glass_to_glass: list = field(default_factory=list)
    frames: int = 0
    analyzed: int = 0
    gated: int = 0  # frames the motion gate let through without running the app
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # CPU time of the whole process (every thread) while frames ran
    watch: Callable[[], None] | None = None  # called between frames (camera.ModelWatcher: a rolled-out model)

    def run(self, source: FrameSource) -> dict:
        start, cpu_start = time.perf_counter(), time.process_time()
        last: Analysis | None = None
        self._source, self._last, self._last_alert = source, None, None
        self._marks = {"t": start, "frames": 0}
        reference = None  # thumbnail of the last analysed frame (motion gate)
        label_before = None
        writer = SinkThread(self.sinks, self.timer, self.config.overlay) if self.sinks else None
        floor = self._decode_floor()
        if floor is not None:
            source.reduce_decoding(*floor)
        ahead = self.config.every == 1 and not self.config.motion_gate and self.app.prepare
        if self.config.scale != 1.0 or ahead:
            source.transform = lambda frame: self._ahead(frame, ahead)
        iterator = iter(source)
        try:
            while not self.config.max_frames or self.frames < self.config.max_frames:
                with self.timer("wait"):
                    frame = next(iterator, None)
                if frame is None or (writer is not None and writer.quit):
                    break
                if self.watch is not None:
                    self.watch()
                analyze = last is None or self.frames % self.config.every == 0
                if analyze and last is not None and self.config.motion_gate > 0:
                    with self.timer("gate"):
                        small = thumbnail(frame.image)
                        if float(np.abs(small - reference).mean()) < self.config.motion_gate:
                            analyze, self.gated = False, self.gated + 1
                if analyze:
                    last, events = self.app.analyze(frame.image, frame.t, frame.prepared)
                    self.analyzed += 1
                    if self.config.motion_gate > 0:
                        reference = thumbnail(frame.image)
                else:
                    events = []  # --every / motion gate: the last analysis stands for this frame
                self.glass_to_glass.append(time.monotonic() - frame.captured)
                self._last = last
                if last.alerts:
                    self._last_alert = {"alerts": list(last.alerts), "time": round(time.time(), 3)}
                if last.label != label_before:
                    events.insert(0, {"type": "label", "label": last.label, "score": round(last.score, 4)})
                    label_before = last.label
                if self.events is not None:
                    for event in events:
                        self.events.write({"frame": frame.index, "t": round(frame.t, 3),
                                           "time": round(time.time(), 3), **event})
                self.frames += 1
                if writer is not None:
                    line, status = self._live_metrics(start, last)
                    writer.submit(frame, last, line, status)
        finally:
            self.seconds = time.perf_counter() - start
            self.cpu_seconds = time.process_time() - cpu_start
            if writer is not None:
                writer.close()
            if self.events is not None:
                self.events.close()
        return self.summary(source)

    # Frames that a person sees (video file, stream, window) keep at least this size when decoded reduced.
    SHOWN_MIN = (640, 360)

    def _decode_floor(self) -> tuple[int, int] | None:
        """The smallest (width, height) frames may be decoded at: the model's input for apps that classify
        the whole frame (a face needs the full frame), at least SHOWN_MIN when a sink shows it. None: full."""
        from edgekit.core.spec import crop_resize_to

        if not self.config.reduced_decode or self.config.scale != 1.0 or not self.app.prepare:
            return None
        spec = self.app.classify.spec
        height, width = spec.input_size
        if spec.resize == "crop":  # the shorter side is resized to resize_to before the centre is cut
            width = height = crop_resize_to(spec)
        if self.sinks:
            width, height = max(width, self.SHOWN_MIN[0]), max(height, self.SHOWN_MIN[1])
        return width, height

    def _ahead(self, frame: Frame, prepare) -> Frame:
        """On the source's reader thread: --scale, and the model input when every frame will be analysed,
        so that the main thread does little besides inference."""
        import cv2

        if self.config.scale != 1.0:
            with self.timer("resize"):
                image = cv2.resize(frame.image, None, fx=self.config.scale, fy=self.config.scale,
                                   interpolation=cv2.INTER_AREA if self.config.scale < 1 else cv2.INTER_LINEAR)
            frame = replace(frame, image=image)
        return replace(frame, prepared=prepare(frame.image)) if prepare else frame

    def _live_metrics(self, start: float, last: Analysis) -> tuple[str, dict]:
        infer = self.timer.times.get("infer") or [0.0]
        fps = self.frames / max(1e-9, time.perf_counter() - start)
        g2g = self.glass_to_glass[-30:]
        if self.frames % 30 == 1:
            self._rss = peak_rss_mb()
        line = (f"{fps:.1f} FPS | infer {1e3 * float(np.mean(infer[-30:])):.1f} ms | "
                f"glass-glass {1e3 * float(np.mean(g2g)):.0f} ms | RSS {getattr(self, '_rss', 0) or 0:.0f} MB")
        status = {"label": last.label, "score": round(last.score, 4), "alerts": list(last.alerts),
                  "frames": self.frames, "fps": round(fps, 2), **last.info}
        return line, status

    def telemetry(self) -> dict:
        """Live figures for fleet telemetry, about the present rather than the whole run: FPS since the
        previous call, per-stage and glass-to-glass p50/p90 of the last 200 frames, frames dropped by the
        source, the current label and alerts, the last alert. Called from the publisher's thread: it only
        reads counters and slices of lists the pipeline appends to."""
        marks = getattr(self, "_marks", None)
        if marks is None:
            return {"frames": 0}
        now, frames = time.perf_counter(), self.frames
        stages = recent_stages(self.timer.times)
        g2g = recent_stages({"g2g": self.glass_to_glass}).get("g2g")
        fps = (frames - marks["frames"]) / max(1e-9, now - marks["t"])
        marks["t"], marks["frames"] = now, frames
        last = self._last
        return {"app": self.app.name, "frames": frames, "fps": round(fps, 2), "stages": stages,
                "glass_to_glass": g2g,
                "dropped_frames": self._source.stats.dropped if self._source is not None else 0,
                "label": last.label if last else None, "alerts": list(last.alerts) if last else [],
                "last_alert": self._last_alert}

    def summary(self, source: FrameSource) -> dict:
        def stats(values):
            if not values:
                return None
            ms = np.asarray(values) * 1e3
            return {"p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
                    "mean_ms": float(ms.mean()), "count": int(len(ms))}

        infer = stats(self.timer.times.get("infer"))
        return {
            "app": self.app.name, "frames": self.frames, "analyzed": self.analyzed, "gated": self.gated,
            "inferences": self.app.classify.inferences, "faces": self.app.face_search, "seconds": self.seconds,
            "pipeline_fps": self.frames / self.seconds if self.seconds > 0 else 0.0,
            "cpu_seconds": self.cpu_seconds, "cpu_ms_per_frame": 1e3 * self.cpu_seconds / max(1, self.frames),
            "model_only_fps": 1e3 / infer["mean_ms"] if infer else None,
            "stages": {s: stats(self.timer.times[s]) for s in sorted(self.timer.times, key=stage_order)
                       if self.timer.times[s]},
            "glass_to_glass": stats(self.glass_to_glass),
            "source": {"name": source.source, "live": source.live, "read": source.stats.read,
                       "dropped": source.stats.dropped, "corrupt": source.stats.corrupt,
                       "reconnects": source.stats.reconnects, "error": source.error,
                       "decoded_at": f"1/{source.reduce}" if source.reduce > 1 else "full size"},
            "config": {"every": self.config.every, "motion_gate": self.config.motion_gate, "scale": self.config.scale,
                       "reduced_decode": self.config.reduced_decode},
            "peak_rss_mb": peak_rss_mb(), "runtime": self.app.classify.runtime.describe(),
        }


def format_summary(summary: dict) -> str:
    lines = [f"{summary['app']}: {summary['frames']} frames in {summary['seconds']:.1f} s: pipeline "
             f"{summary['pipeline_fps']:.1f} FPS, model only {summary['model_only_fps'] or 0:.1f} FPS "
             f"({summary['inferences']} inferences" + (f", {summary['gated']} frames gated" if summary["gated"] else "")
             + f"); CPU {summary['cpu_ms_per_frame']:.2f} ms per frame, all threads"]
    if summary["app"] == "clip" and summary["seconds"] > 0:
        lines.append(f"{summary['inferences']} clip decisions, {summary['inferences'] / summary['seconds']:.1f} per "
                     "second end to end")
    faces = summary.get("faces") or {}
    if faces.get("searched"):
        lines.append(f"faces found in {faces['found']} of {faces['searched']} frames searched")
    for stage, s in summary["stages"].items():
        lines.append(f"  {stage:<11} p50 {s['p50_ms']:7.2f} ms  p90 {s['p90_ms']:7.2f} ms")
    g = summary["glass_to_glass"]
    if g:
        lines.append(f"  {'glass-glass':<11} p50 {g['p50_ms']:7.2f} ms  p90 {g['p90_ms']:7.2f} ms")
    src = summary["source"]
    lines.append(f"source {src['name']}: read {src['read']}, dropped {src['dropped']}, corrupt {src['corrupt']}"
                 + (f", reconnects {src['reconnects']}" if src["reconnects"] else "")
                 + (f"; {src['error']}" if src["error"] else "")
                 + (f"; peak RSS {summary['peak_rss_mb']:.0f} MB" if summary["peak_rss_mb"] else ""))
    video = summary.get("video")
    if video:
        lines.append(f"{Path(video['path']).name}: {video['frames']} frames"
                     + (f" ({video['resized']} of another size fitted to {video['size'][0]}x{video['size'][1]})"
                        if video["resized"] else ""))
    return "\n".join(lines)
