"""`edgekit join`: the participant's side of EdgeAttend. Capture, face, attentiveness classifier and smoothing
all run here; only a small tile (or, in privacy mode, only the label) goes to the server, and the shared
grid comes back.

The loop never stops for the network: while disconnected it keeps analysing frames and retries the server
with exponential backoff (0.5 s doubling to 8 s). With no camera it sends a black tile and "not attentive".
A wrong token or an untrusted TLS certificate ends it at once with one error line; "meeting full" is retried
for ``full_wait`` seconds; a run that never got into the meeting exits non-zero.
"""
from __future__ import annotations

import logging
import ssl
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np

from edgekit.edge_apps import protocol as p
from edgekit.edge_apps.apps import Analysis
from edgekit.edge_apps.meeting_client import JoinRefused, MeetingClient
from edgekit.edge_apps.sources import Frame, FrameSource
from edgekit.core import checks
from edgekit.core.errors import BadInputError
from edgekit.core import jsonio

log = logging.getLogger("edgekit.join")


@dataclass(frozen=True)
class JoinConfig:
    source: str = "0"
    fps: float = 10.0  # at most this many tiles per second
    duration: float = 0.0  # 0 = until Ctrl-C
    loop: bool = False  # restart a video file at its end (a file standing in for a camera)
    tile: tuple[int, int] = (240, 180)
    quality: int = 70
    full_wait: float = 60.0  # "meeting full": keep retrying this long, then give up (exit non-zero)

    def __post_init__(self) -> None:
        checks.within("--fps", self.fps, 0, 60, low_open=True)
        checks.within("--full-wait", self.full_wait, 0, 86_400)
        checks.within("--duration", self.duration, 0, 10**7)
        checks.within("JPEG quality", self.quality, 1, 100)
        for side in self.tile:
            checks.within("tile size", side, 16, 1920)


def black_frames(fps: float) -> Iterator[Frame]:
    start, index = time.monotonic(), 0
    while True:
        time.sleep(max(0.0, start + index / fps - time.monotonic()))
        now = time.monotonic()
        yield Frame(index, np.zeros((180, 240, 3), np.uint8), now, now - start)
        index += 1


def open_source(cfg: JoinConfig) -> FrameSource | None:
    try:
        return FrameSource(cfg.source, realtime=True, loop=cfg.loop)
    except BadInputError as exc:
        log.warning("camera unavailable (%s): sending a black tile, 'not attentive'", exc)
        return None


def show_grid(client: MeetingClient, viewers: list, shown: int) -> int:
    """Hand a newly received grid to the viewers (an MjpegServer and/or a WindowSink); returns its number."""
    import cv2

    if client.grids == shown or client.grid is None:
        return shown
    grid = client.grid
    for viewer in viewers:
        if hasattr(viewer, "publish"):
            viewer.publish(grid, {"grids": client.grids, "connected": client.connected})
        else:
            image = cv2.imdecode(np.frombuffer(grid, np.uint8), cv2.IMREAD_COLOR)
            if image is not None:
                viewer.write(image)
    return client.grids


def run_join(client: MeetingClient, app, cfg: JoinConfig, out: Path, viewers: list | None = None,
             live: dict | None = None) -> dict:
    """Join and send tiles until the source ends, ``cfg.duration`` passes or Ctrl-C. ``live``, when given,
    is kept up to date (frames, sent, label, connected) for fleet telemetry read from another thread."""
    import cv2

    viewers = viewers or []
    shown = 0
    started = time.monotonic()
    sent = frames = 0
    last_tile = 0.0
    backoff, next_try = 0.5, 0.0
    full_since = None  # when "meeting full" answers began
    source = open_source(cfg)
    camera = source is not None
    try:
        for frame in iter(source) if source is not None else black_frames(cfg.fps):
            now = time.monotonic()
            if cfg.duration and now - started >= cfg.duration:
                return summary(client, frames, sent, camera, started)
            if not client.connected and now >= next_try:
                try:
                    client.connect()
                    log.info("joined %s:%d as %s", client.host, client.port, client.welcome.get("name"))
                    backoff, full_since = 0.5, None
                except JoinRefused as exc:
                    if "meeting full" not in str(exc):
                        raise  # a wrong token stays wrong
                    full_since = now if full_since is None else full_since
                    if now - full_since > cfg.full_wait:
                        raise JoinRefused(f"{exc}; still full after {cfg.full_wait:.0f} s") from None
                    log.warning("meeting full; retrying in %.1f s", backoff)
                    next_try, backoff = now + backoff, min(8.0, backoff * 2)
                except ssl.SSLCertVerificationError as exc:
                    raise BadInputError(f"the server's TLS certificate is not trusted ({exc.verify_message}); "
                                        "pass --tls-ca with the CA that signed it") from None
                except (OSError, p.ProtocolError) as exc:
                    log.warning("server %s:%d unreachable (%s); retrying in %.1f s", client.host, client.port,
                                exc, backoff)
                    next_try, backoff = now + backoff, min(8.0, backoff * 2)
            analysis = app.analyze(frame.image, frame.t)[0] if camera else Analysis("not attentive", 0.0)
            frames += 1
            if live is not None:
                live.update(frames=frames, sent=sent, label=analysis.label, connected=client.connected,
                            grids_received=client.grids)
            shown = show_grid(client, viewers, shown)
            if client.connected and now - last_tile >= 1.0 / cfg.fps:
                meta = {"label": analysis.label, "score": round(float(analysis.score), 4), "seq": frames}
                if client.privacy:
                    message = p.encode_json(p.STATUS, meta)
                else:
                    tile = cv2.resize(frame.image, cfg.tile, interpolation=cv2.INTER_AREA)
                    jpeg = cv2.imencode(".jpg", tile, [cv2.IMWRITE_JPEG_QUALITY, cfg.quality])[1].tobytes()
                    message = p.encode_tile(meta, jpeg)
                if client.send(message):
                    sent, last_tile = sent + 1, now
                else:
                    log.warning("lost the server (%s); reconnecting", client.error)
                    next_try = now + backoff
        return summary(client, frames, sent, camera, started)
    finally:
        if source is not None:
            source.close()
        client.close()
        if client.grid:  # after the threads are stopped: a failed write must not skip their shutdown
            jsonio.write_bytes(out / "grid.jpg", client.grid)


def summary(client: MeetingClient, frames: int, sent: int, camera: bool, started: float) -> dict:
    return {"frames": frames, "sent": sent, "grids_received": client.grids, "connects": client.connects,
            "camera": camera, "seconds": round(time.monotonic() - started, 2), "last_error": client.error}


def write_summary(out: Path, result: dict) -> None:
    jsonio.write(out / "summary.json", result, indent=2)
