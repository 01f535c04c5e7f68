"""EdgeAttend participant: a blocking client that `edgekit join` drives (edge_apps/join.py).

The app's loop sends tiles and statuses; one thread receives grids, pongs and errors and is the only one that
closes the socket; another sends a PING when nothing else went out for a while.
"""
from __future__ import annotations

import ssl
import threading
import time

from edgekit.core.errors import BadInputError
from edgekit.edge_apps import protocol as p


class JoinRefused(BadInputError):
    """The server said no (wrong token, meeting full): retrying will not help."""


class MeetingClient:
    """A blocking client: ``send_*`` from the app's loop, a thread receives grids and pongs."""

    def __init__(self, server: str, name: str, token: str, privacy: bool = False, tls: bool = False,
                 tls_ca: str | None = None, max_message: int = p.MAX_MESSAGE):
        host, _, port = server.rpartition(":")
        if not host or not port.isdigit():
            raise BadInputError(f"--server needs HOST:PORT, got {server!r}")
        self.host, self.port = host, int(port)
        self.name, self.token, self.privacy = name, token, privacy
        self.tls, self.tls_ca, self.max_message = tls, tls_ca, max_message
        self.sock = None
        self.lock = threading.Lock()
        self.grid: bytes | None = None
        self.grids = 0
        self.welcome: dict = {}
        self.error: str | None = None
        self.connects = 0
        self.last_sent = 0.0

    @property
    def connected(self) -> bool:
        return self.sock is not None

    def connect(self) -> None:
        import socket

        raw = socket.create_connection((self.host, self.port), timeout=5.0)
        raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        sock = raw
        if self.tls:
            context = ssl.create_default_context(cafile=self.tls_ca)
            sock = context.wrap_socket(raw, server_hostname=self.host)
        sock.sendall(p.encode_json(p.HELLO, {"token": self.token, "name": self.name, "privacy": self.privacy}))
        kind, payload = p.recv_message(sock, self.max_message)
        if kind == p.ERROR:
            sock.close()
            raise JoinRefused(f"the server refused to let {self.name!r} join: {p.decode_json(payload).get('reason')}")
        if kind != p.WELCOME:
            sock.close()
            raise p.ProtocolError(f"expected WELCOME, got {p.NAMES[kind]}")
        self.welcome = p.decode_json(payload)
        sock.settimeout(None)
        self.sock = sock
        self.connects += 1
        self.last_sent = time.monotonic()
        threading.Thread(target=self._receive, args=(sock,), name="edgekit-join-recv", daemon=True).start()
        threading.Thread(target=self._heartbeat, args=(sock, float(self.welcome.get("heartbeat_s", 2.0))),
                         name="edgekit-join-ping", daemon=True).start()

    def _heartbeat(self, sock, every: float) -> None:
        """PING when nothing else was sent for a while (a frozen camera must not look like a dead client)."""
        while self.sock is sock:
            time.sleep(every / 2)
            if time.monotonic() - self.last_sent >= every:
                self.send(p.encode(p.PING))

    def _receive(self, sock) -> None:
        """Reads until the connection ends, then closes the socket. Only this thread closes it: closing it
        from another thread while a read is in flight would let that read land on whatever socket reuses the
        file descriptor next (OpenSSL keeps the raw descriptor), which a test caught."""
        try:
            while True:
                kind, payload = p.recv_message(sock, self.max_message)
                if kind == p.GRID:
                    self.grid, self.grids = payload, self.grids + 1
                elif kind == p.ERROR:
                    self.error = p.decode_json(payload).get("reason")
        except (OSError, ConnectionError, p.ProtocolError) as exc:
            self.error = self.error or f"{type(exc).__name__}: {exc}"
        finally:
            self.drop(sock)
            sock.close()

    def drop(self, sock=None) -> None:
        """Mark the connection gone and shut it down; the receive thread then wakes up and closes it."""
        import socket

        with self.lock:
            if self.sock is not None and (sock is None or sock is self.sock):
                try:
                    self.sock.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass  # already reset by the peer
                self.sock = None

    def send(self, message: bytes) -> bool:
        with self.lock:
            sock = self.sock
            if sock is None:
                return False
            try:
                sock.sendall(message)
                self.last_sent = time.monotonic()
                return True
            except OSError as exc:
                self.error = f"send failed: {exc}"
        self.drop(sock)
        return False

    def close(self) -> None:
        self.send(p.encode(p.BYE))
        self.drop()
