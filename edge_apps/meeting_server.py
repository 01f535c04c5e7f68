"""EdgeAttend server: many participants run the attentiveness app on their own devices; one server aggregates.

Server (``edgekit serve``): one asyncio event loop for every connection, so a hundred clients cost a
hundred small coroutines, not threads. Each client has

- a reader coroutine: handshake (join token compared in constant time, name sanitised), then TILE / STATUS /
  PING messages; the newest tile replaces the previous one (a fast sender cannot queue up work);
- a writer coroutine fed by a one-slot outbox (the newest grid wins), so a slow client only slows itself.

A composer runs ``fps`` times a second on a worker thread (``edge_apps/grid.py``): decodes the newest tiles
(an invalid JPEG is counted and the previous tile kept), draws the annotated grid for the host (labels, scores, coloured
borders, a status panel) and the clean grid for participants (names only), and hands them out. The host
watches the annotated grid at ``http://HOST:HTTP_PORT/`` (MJPEG + status), ``/status.json`` for scripts.

The wire format is ``edge_apps/protocol.py``; the participant's side is ``edge_apps/meeting_client.py``.

Failures stay local: a malformed, oversized or unauthenticated message closes that one connection with a
logged reason; a client silent for ``timeout`` seconds of the server's own running time (no tile, no ping;
counted by the composer, so a stalled server blames nobody) is dropped; wrong join tokens make further tries
from that address wait longer (0.5 s doubling to 30 s after 3); TCP keep-alive finds
dead peers the OS knows about.
"""
from __future__ import annotations

import asyncio
import hmac
import logging
import secrets
import ssl
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from edgekit.core import checks
from edgekit.core.errors import BadInputError
from edgekit.core.hardware import current_rss_mb, peak_rss_mb
from edgekit.core.ratelimit import RateLimitedLog
from edgekit.edge_apps import protocol as p
from edgekit.edge_apps.grid import compose

log = logging.getLogger("edgekit.meeting")
FREE_FAILURES = 3  # wrong join tokens per address before each further try waits
MAX_TRACKED_ADDRESSES = 4096


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"  # this machine only unless told otherwise (0.0.0.0: every interface)
    port: int = 7700
    http: str | None = ":8080"  # MJPEG dashboard address; None = off
    token: str = ""
    viewer_token: str = ""  # for the dashboard; "" = a random one (printed at start)
    fps: float = 10.0  # grids per second
    timeout: float = 6.0  # seconds of silence after which a client counts as gone
    max_message: int = p.MAX_MESSAGE
    max_clients: int = 64
    tls_cert: str | None = None
    tls_key: str | None = None
    duration: float = 0.0  # stop after this many seconds (0 = until Ctrl-C)

    def __post_init__(self) -> None:
        checks.port("--port", self.port)
        checks.within("--fps", self.fps, 0, 60, low_open=True)
        checks.within("--timeout", self.timeout, 0, 3600, low_open=True)
        checks.within("--max-clients", self.max_clients, 1, 1024)
        checks.within("--max-message-kb", self.max_message / 1024, 1, 64 * 1024)
        checks.within("--duration", self.duration, 0, 10**7)
        if bool(self.tls_cert) != bool(self.tls_key):
            raise BadInputError("TLS needs both --tls-cert and --tls-key")


@dataclass
class Participant:
    id: int
    name: str
    address: str
    privacy: bool
    writer: asyncio.StreamWriter
    joined: float = field(default_factory=time.monotonic)
    last_seen: float = field(default_factory=time.monotonic)
    label: str = "waiting"
    score: float = 0.0
    jpeg: bytes | None = None  # newest tile, not yet decoded
    arrived: float | None = None  # when that tile arrived (for frame-to-grid latency)
    image: np.ndarray | None = None  # the decoded tile shown in the grid
    tiles: int = 0
    bad_tiles: int = 0
    outbox: asyncio.Queue = field(default_factory=lambda: asyncio.Queue(maxsize=1))
    recent: deque = field(default_factory=lambda: deque(maxlen=50))  # arrival times, for FPS
    silence: float = 0.0  # seconds of the server's own running time without a message from this client

    def fps(self, now: float) -> float:
        times = [t for t in self.recent if now - t <= 5.0]
        return (len(times) - 1) / (times[-1] - times[0]) if len(times) > 1 and times[-1] > times[0] else 0.0


def offer(queue: asyncio.Queue, item) -> None:
    """Put into a one-slot queue, replacing what is there (newest wins)."""
    if queue.full():
        queue.get_nowait()
    queue.put_nowait(item)


class MeetingServer:
    def __init__(self, cfg: ServerConfig):
        self.cfg = cfg
        self.token = cfg.token or secrets.token_urlsafe(12)
        self.participants: dict[int, Participant] = {}
        self._next_id = 1
        self.latencies: deque = deque(maxlen=20000)  # frame-to-grid seconds
        self.grids = 0
        self.rejected = 0  # connections closed for a protocol, auth or size reason
        self.events: deque = deque(maxlen=1000)  # recent joins and leaves, for the status page and tests
        self.joins_and_leaves = 0
        self.http = None
        self.port = cfg.port
        self._stop: asyncio.Event | None = None
        self.failures: dict[str, int] = {}  # wrong join tokens per address (insertion order = age)
        self.logs = RateLimitedLog(log)  # connection-level lines: a flood of bad peers cannot flood the log

    # ---- connections -------------------------------------------------------------------------------------
    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        address = f"{peer[0]}:{peer[1]}" if peer else "?"
        sock = writer.get_extra_info("socket")
        if sock is not None:
            import socket

            sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        participant = None
        sender = None
        try:
            host = peer[0] if peer else "?"
            delay = self._backoff(host)
            if delay:
                await asyncio.sleep(delay)  # wrong tokens from this address before: each try waits longer
            participant = await asyncio.wait_for(self._handshake(reader, writer, address, host), timeout=5.0)
            sender = asyncio.create_task(self._sender(participant))
            while True:  # no read timeout here: the composer judges silence (see _watch_silence)
                kind, payload = await p.read_message(reader, self.cfg.max_message)
                participant.last_seen, participant.silence = time.monotonic(), 0.0
                if kind == p.TILE:
                    meta, jpeg = p.decode_tile(payload)
                    self._update(participant, meta)
                    if jpeg and not participant.privacy:
                        participant.jpeg, participant.arrived = jpeg, time.monotonic()
                        participant.tiles += 1
                        participant.recent.append(participant.arrived)
                elif kind == p.STATUS:
                    self._update(participant, p.decode_json(payload))
                    participant.recent.append(time.monotonic())
                elif kind == p.PING:
                    offer(participant.outbox, p.encode(p.PONG))
                elif kind == p.BYE:
                    log.info("%s (%s) said goodbye", participant.name, address)
                    break
                else:
                    raise p.ProtocolError(f"unexpected {p.NAMES[kind]} from a client")
        except p.ProtocolError as exc:
            self.rejected += 1
            self.logs.warning("closing %s (%s): %s", participant.name if participant else "unauthenticated", address,
                              exc)
            if sender is not None:
                sender.cancel()  # the ERROR must be the last message: no grid may follow it while it drains
            try:
                writer.write(p.encode_json(p.ERROR, {"reason": str(exc)}))
                await asyncio.wait_for(writer.drain(), 1.0)
            except (OSError, asyncio.TimeoutError):
                pass  # the peer is already gone; the reason is logged above
        except asyncio.TimeoutError:  # only the handshake has a timeout; silence after it is _watch_silence's
            self.logs.info("closing %s: no HELLO within 5 s", address)
        except (asyncio.IncompleteReadError, ConnectionError, OSError) as exc:
            self.logs.info("%s (%s) disconnected: %s", participant.name if participant else "client", address,
                     type(exc).__name__)
        finally:
            if sender is not None:
                sender.cancel()
            if participant is not None and self.participants.pop(participant.id, None) is not None:
                self.events.append({"type": "leave", "name": participant.name, "time": time.time()})
                self.joins_and_leaves += 1
                log.info("%s left (%d in the meeting)", participant.name, len(self.participants))
            writer.close()

    async def _handshake(self, reader, writer, address: str, host: str) -> Participant:
        kind, payload = await p.read_message(reader, p.MAX_JSON)
        if kind != p.HELLO:
            raise p.ProtocolError(f"expected HELLO, got {p.NAMES[kind]}")
        hello = p.decode_json(payload)
        token = p.field(hello, "token", str, "")
        name = p.field(hello, "name", str, "")
        privacy = p.field(hello, "privacy", bool, False)
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            count = self._failed(host)
            self.logs.warning("wrong join token from %s (%d failures; next try waits %.1f s)", host, count,
                              self._backoff(host))
            raise p.ProtocolError("wrong join token")
        self.failures.pop(host, None)
        if len(self.participants) >= self.cfg.max_clients:
            raise p.ProtocolError(f"meeting full ({self.cfg.max_clients} participants)")
        name = p.sanitize_name(name)
        taken = {q.name for q in self.participants.values()}
        base, n = name, 2
        while name in taken:
            name, n = f"{base}-{n}", n + 1
        participant = Participant(self._next_id, name, address, privacy, writer)
        self._next_id += 1
        self.participants[participant.id] = participant
        self.events.append({"type": "join", "name": name, "time": time.time()})
        self.joins_and_leaves += 1
        writer.write(p.encode_json(p.WELCOME, {"id": participant.id, "name": name,
                                               "heartbeat_s": self.cfg.timeout / 3}))
        await writer.drain()
        log.info("%s joined from %s%s (%d in the meeting)", name, address, ", privacy mode" if participant.privacy
                 else "", len(self.participants))
        return participant

    def _failed(self, host: str) -> int:
        if host not in self.failures and len(self.failures) >= MAX_TRACKED_ADDRESSES:
            del self.failures[next(iter(self.failures))]  # the oldest address: memory stays bounded
        self.failures[host] = self.failures.get(host, 0) + 1
        return self.failures[host]

    def _backoff(self, host: str) -> float:
        """Seconds a connection from ``host`` waits before its HELLO is read: 0 for the first few wrong
        tokens, then doubling from 0.5 s up to 30 s."""
        failures = self.failures.get(host, 0)
        return 0.0 if failures < FREE_FAILURES else min(30.0, 0.5 * 2 ** (failures - FREE_FAILURES))

    def _watch_silence(self, elapsed: float) -> None:
        """Add the composer's own running time since its last tick (at most two periods, so a stall of the
        server itself is never blamed on the clients) to every client's silence; close the silent ones."""
        step = min(elapsed, 2.0 / self.cfg.fps)
        for q in list(self.participants.values()):
            q.silence += step
            if q.silence > self.cfg.timeout:
                log.warning("closing %s (%s): silent for %.0f s", q.name, q.address, q.silence)
                q.silence = float("-inf")  # once
                q.writer.close()

    @staticmethod
    def _update(participant: Participant, meta: dict) -> None:
        label, score = p.field(meta, "label", str), p.field(meta, "score", (int, float))
        if label is None or score is None or not 0 <= score <= 1:
            raise p.ProtocolError("label must be text and score a number in [0, 1]")
        participant.label, participant.score = p.sanitize_name(label, empty="?"), float(score)

    async def _sender(self, participant: Participant) -> None:
        while True:
            message = await participant.outbox.get()
            participant.writer.write(message)
            await participant.writer.drain()  # a slow client waits here, alone

    async def _composer(self) -> None:
        period = 1.0 / self.cfg.fps
        last_tick = time.monotonic()
        while True:
            started = time.monotonic()
            people = sorted(self.participants.values(), key=lambda q: q.id)
            annotated, clean, arrived = await asyncio.to_thread(compose, people)
            now = time.monotonic()
            self.latencies.extend(now - t for t in arrived)
            self.grids += 1
            if self.http is not None:
                self.http.publish(annotated)
            message = p.encode(p.GRID, clean)
            for q in people:
                if q.id in self.participants:
                    offer(q.outbox, message)
            self._watch_silence(now - last_tick)
            last_tick = now
            await asyncio.sleep(max(0.0, period - (time.monotonic() - started)))

    def status(self) -> dict:
        now = time.monotonic()
        lat = np.asarray(self.latencies) * 1e3 if self.latencies else None
        return {
            "count": len(self.participants), "grids": self.grids, "rejected": self.rejected,
            "time": time.strftime("%Y-%m-%d %H:%M:%S"),
            "participants": [{"name": q.name, "label": q.label, "score": round(q.score, 3), "privacy": q.privacy,
                              "tiles": q.tiles, "bad_tiles": q.bad_tiles, "fps": round(q.fps(now), 1),
                              "last_seen_s": round(now - q.last_seen, 2)}
                             for q in sorted(list(self.participants.values()), key=lambda q: q.id)],
            "latency_ms": None if lat is None else {"p50": float(np.percentile(lat, 50)),
                                                    "p99": float(np.percentile(lat, 99)), "count": int(lat.size)},
            "rss_mb": current_rss_mb(), "peak_rss_mb": peak_rss_mb(),
            "events": list(self.events)[-20:],
        }

    # ---- running -----------------------------------------------------------------------------------------
    def _ssl(self) -> ssl.SSLContext | None:
        if not self.cfg.tls_cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        try:
            context.load_cert_chain(self.cfg.tls_cert, self.cfg.tls_key)
        except (OSError, ssl.SSLError) as exc:
            raise BadInputError(f"cannot load the TLS certificate/key: {exc}") from None
        return context

    async def serve(self, ready=None) -> None:
        self._stop = asyncio.Event()
        try:
            context = self._ssl()
            server = await asyncio.start_server(self.handle, self.cfg.host, self.cfg.port, ssl=context,
                                                limit=self.cfg.max_message + 64,
                                                # a peer that never starts the handshake is dropped like one
                                                # that never says HELLO (asyncio's default is 60 s)
                                                ssl_handshake_timeout=5.0 if context else None)
        except OSError as exc:
            raise BadInputError(f"cannot listen on {self.cfg.host}:{self.cfg.port}: {exc.strerror}") from None
        self.port = server.sockets[0].getsockname()[1]
        if self.cfg.http:
            from edgekit.edge_apps.stream import MjpegServer

            self.http = MjpegServer(self.cfg.http, title="edgekit meeting", status_source=self.status,
                                    token=self.cfg.viewer_token or None, tls=self._ssl())
        if ready is not None:
            ready(self)
        composer = asyncio.create_task(self._composer())
        try:
            if self.cfg.duration:
                try:
                    await asyncio.wait_for(self._stop.wait(), self.cfg.duration)
                except asyncio.TimeoutError:
                    pass
            else:
                await self._stop.wait()
        finally:
            composer.cancel()
            server.close()
            for q in list(self.participants.values()):
                q.writer.close()
            if self.http is not None:
                self.http.close()
