"""`edgekit run` as a library call: a model, a frame source and an app, wired into the pipeline.

:func:`run_camera` takes one validated :class:`RunConfig`, checks the output folder before it loads anything,
runs the pipeline until the source ends (or ``max_frames``, or Ctrl-C), and always closes what it opened in
order: the pipeline's sinks (inside ``Pipeline.run``), then the frame source (stop, join, release), then the
runtime. It writes ``events.jsonl``, ``summary.json`` and, when asked, ``annotated.avi`` into ``out``.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgekit.core import checks
from edgekit.core.errors import BadInputError
from edgekit.core.spec import sha256_file
from edgekit.edge_apps.apps import AppSettings, Timer, app_class, build_app
from edgekit.edge_apps.pipeline import JsonlEvents, Pipeline, PipelineConfig, StreamSink, VideoSink, WindowSink
from edgekit.core import jsonio


@dataclass(frozen=True)
class RunConfig:
    model: str
    runtime: str | None = None  # None: the file's natural runtime
    source: str = "0"  # camera index, video file, image folder or stream URL
    app: str = "classify"  # a name in edgekit.edge_apps.apps.APPS
    faces: str | None = None  # haar, none or a cascade .xml; None: the app's default
    out: str = "runs/run"
    save_video: bool = True
    serve: str | None = None  # HOST:PORT for the MJPEG stream (127.0.0.1 unless a host is given)
    viewer_token: str | None = None  # what a viewer of the stream must present (None: a random one, printed)
    show: bool = False
    realtime: bool = False
    loop: bool = False
    reconnect: int = 5
    threads: int = 2
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)
    settings: AppSettings = field(default_factory=AppSettings)
    fleet: str | None = None  # mqtt[s]://[user@]host[:port]/prefix: publish telemetry there (edge_apps.fleet)
    fleet_ca: str | None = None
    fleet_interval: float = 5.0
    device_id: str | None = None  # the device's name in the fleet (default: the host name)

    def __post_init__(self) -> None:
        app_class(self.app)  # an unknown app fails before the model is loaded
        if self.app == "clip" and (self.pipeline.every != 1 or self.pipeline.motion_gate):
            raise BadInputError("--app clip needs every frame for its clip buffer: use --clip-every N instead of "
                                "--every, and no --motion-gate")
        checks.within("--fleet-interval", self.fleet_interval, 0.05, 3600)
        if self.device_id is not None:
            from edgekit.edge_apps.fleet import check_name

            check_name("--device-id", self.device_id)
        checks.within("--reconnect", self.reconnect, 0, 1000)
        checks.threads("--threads", self.threads)


def prepare_output(folder: Path) -> Path:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot write to {folder}: {exc.strerror}") from exc
    return folder


class ModelWatcher:
    """Switches a running app to a new model when ``--model``'s path comes to mean another file: a fleet
    rollout moves ``MODELS/current`` (edge_apps/rollout.py). Called by the pipeline between frames; it looks
    at the path at most once a second, loads the new model while the camera thread keeps capturing, and
    keeps the running model when the new one does not load or does not fit (labels, input)."""

    def __init__(self, path: str, runtime: str | None, options, classifier, say: Callable[[str], None],
                 every: float = 1.0):
        self.path, self.runtime, self.options, self.classifier, self.say = path, runtime, options, classifier, say
        self.loaded = self.running = os.path.realpath(path)  # last file tried; file in use
        self.every, self.next = every, 0.0
        self.model = self.describe(path, classifier.runtime.name)
        self.switches: list[dict] = []

    @staticmethod
    def describe(path: str, runtime: str) -> dict:
        return {"name": Path(path).name, "sha256": sha256_file(path)[:16], "runtime": runtime}

    def __call__(self) -> None:
        from edgekit.core.errors import EdgekitError
        from edgekit.runtimes import load_runtime

        now = time.monotonic()
        if now < self.next:
            return
        self.next = now + self.every
        real = os.path.realpath(self.path)
        if real == self.loaded or not os.path.isfile(real):
            return
        self.loaded = real  # one try per change of the path
        if real == self.running:  # back to the model in use (a rollout rolled back): nothing to load
            return
        old, new = self.classifier.runtime, None
        try:
            new = load_runtime(real, self.runtime, self.options)
            self.classifier.swap(new)
        except (EdgekitError, OSError, RuntimeError, ValueError) as exc:
            if new is not None:
                new.close()
            self.say(f"model at {self.path} changed but was not switched to: {exc}")
            self.switches.append({"to": real, "ok": False, "why": str(exc)})
            return
        old.close()
        self.running = real
        self.model = self.describe(real, new.name)
        self.switches.append({"to": real, "ok": True, "sha256": self.model["sha256"]})
        self.say(f"switched to {real} ({self.model['sha256']})")


def run_camera(cfg: RunConfig, say: Callable[[str], None] = lambda line: None) -> dict:
    """Run ``cfg.app`` on every frame of ``cfg.source``; returns the summary (also written as summary.json).
    ``say`` receives progress lines meant for the user (the stream's URL)."""
    from edgekit.edge_apps.faces import load_detector
    from edgekit.edge_apps.sources import FrameSource
    from edgekit.runtimes import RuntimeOptions, load_runtime

    folder = prepare_output(Path(cfg.out))
    target = None
    if cfg.fleet:
        from edgekit.edge_apps.fleet import FleetTarget, TelemetryPublisher, default_device_id

        target = FleetTarget.parse(cfg.fleet, cfg.fleet_ca)
    detector = load_detector(cfg.faces if cfg.faces is not None else app_class(cfg.app).default_faces)
    rt = load_runtime(cfg.model, cfg.runtime, RuntimeOptions(threads=cfg.threads))
    frames = publisher = app = None
    try:
        timer = Timer()
        app = build_app(cfg.app, rt, timer, detector, cfg.settings)
        frames = FrameSource(cfg.source, reconnect=cfg.reconnect, realtime=cfg.realtime, loop=cfg.loop)
        sinks = [VideoSink(folder / "annotated.avi", frames.fps)] if cfg.save_video else []
        if cfg.show:
            sinks.append(WindowSink())
        if cfg.serve:
            from edgekit.edge_apps.stream import MjpegServer

            server = MjpegServer(cfg.serve, title=f"edgekit run --app {cfg.app}", token=cfg.viewer_token)
            sinks.append(StreamSink(server))
            say(f"streaming on {server.url}" + (f" (viewer token {server.token})" if server.generated_token else ""))
        watcher = ModelWatcher(cfg.model, cfg.runtime, RuntimeOptions(threads=cfg.threads), app.classify, say)
        pipeline = Pipeline(app, timer, cfg.pipeline, events=JsonlEvents(folder / "events.jsonl"), sinks=sinks,
                            watch=watcher)
        if target is not None:
            publisher = TelemetryPublisher(target, cfg.device_id or default_device_id(),
                                           lambda: {"model": watcher.model, **pipeline.telemetry()},
                                           cfg.fleet_interval)
            publisher.start()
            say(f"fleet telemetry every {cfg.fleet_interval:g} s to {target} as {publisher.device}")
        try:
            summary = pipeline.run(frames)
        except KeyboardInterrupt:
            summary = pipeline.summary(frames)  # run() closed the sinks: the video is finalised, events flushed
            summary["interrupted"] = True
        for sink in sinks:
            if isinstance(sink, VideoSink):
                summary["video"] = sink.report()
        if watcher.switches:
            summary["model_switches"] = watcher.switches
    finally:
        if publisher is not None:  # its last document reads the pipeline: stop it before the source goes
            publisher.close()
        if frames is not None:
            frames.close()
        rt = app.classify.runtime if app is not None else rt  # the model in use (a rollout may have switched it)
        rt.close()
    jsonio.write(folder / "summary.json", summary, indent=2, default=str)
    summary["written"] = [str(folder / name) for name in ("events.jsonl", "summary.json", "annotated.avi")
                          if name != "annotated.avi" or cfg.save_video]
    return summary
