"""A small MJPEG-over-HTTP(S) server: watch the annotated stream in any browser, no plugin, no codec.

Endpoints: ``/`` (a page showing the stream and a status panel), ``/stream.mjpg`` (multipart/x-mixed-replace
JPEG frames, the format browsers and VLC play directly), ``/frame.jpg`` (the newest frame), ``/status.json``,
and ``/login`` (a form; POSTing the viewer token sets an HttpOnly session cookie).

Every endpoint but ``/login`` needs the **viewer token**: the session cookie from the login form, or an
``Authorization: Bearer TOKEN`` header (scripts). Anything else gets a bare 401. Tokens never travel in URLs
(a browser history would keep them) and are never logged. Without an explicit host the server listens on
127.0.0.1 only; with a TLS context it speaks HTTPS (the handshake runs on the connection's own thread, with
the request timeout, so a client that never starts it holds nothing for long).

Bounded cost: at most ``max_connections`` connections are served at once (more are closed at accept), each
request has ``timeout`` seconds to arrive and every write as long to drain (a stalled viewer is dropped), and
nothing is logged per request. Publishing never blocks the pipeline: each viewer always gets the newest
frame; a slow viewer skips frames instead of holding anyone up.
"""
from __future__ import annotations

import hmac
import html
import secrets
import socket
import ssl
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs

from edgekit.core.errors import BadInputError
from edgekit.core import jsonio

BOUNDARY = "edgekitframe"
COOKIE = "edgekit_session"
MAX_SESSIONS = 256

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;background:#111;color:#eee;margin:1em}} img{{max-width:100%}}
#status{{white-space:pre;font-family:monospace}}</style></head>
<body><h3>{title}</h3><img id="live" src="/stream.mjpg" alt="live stream">
<div id="status">waiting for status...</div>
<script>
async function poll() {{
  try {{
    const r = await fetch('/status.json', {{cache: 'no-store'}});
    document.getElementById('status').textContent = JSON.stringify(await r.json(), null, 1);
  }} catch (e) {{ document.getElementById('status').textContent = 'server gone: ' + e; }}
}}
setInterval(poll, 1000); poll();
</script></body></html>
"""

LOGIN = """<!doctype html>
<html><head><meta charset="utf-8"><title>{title}: sign in</title>
<style>body{{font-family:sans-serif;background:#111;color:#eee;margin:1em}}</style></head>
<body><h3>{title}</h3><p>401: this stream needs its viewer token.</p>
<form method="post" action="/login"><input id="token" name="token" type="password" autocomplete="off"
 placeholder="viewer token"> <button type="submit">Watch</button></form></body></html>
"""


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``:PORT`` (127.0.0.1: this machine only; pass 0.0.0.0:PORT to serve the network)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise BadInputError(f"--serve needs HOST:PORT or :PORT, got {text!r}")
    return host or "127.0.0.1", int(port)


class _BoundedServer(ThreadingHTTPServer):
    """A thread per connection, but never more than ``limit`` at once; TLS is set up per connection."""

    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address, handler, limit: int, tls: ssl.SSLContext | None, timeout: float):
        self.slots = threading.BoundedSemaphore(limit)
        self.tls, self.timeout = tls, timeout
        self.refused = 0
        super().__init__(address, handler)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            self.refused += 1
            self.shutdown_request(request)  # over the cap: closed at once, no thread, no descriptor kept
            return
        super().process_request(request, client_address)

    def finish_request(self, request, client_address):
        """On the connection's thread: the TLS handshake (bounded by the timeout), then the request."""
        if self.tls is None:
            self.RequestHandlerClass(request, client_address, self)
            return
        request.settimeout(self.timeout)
        try:
            secure = self.tls.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # no handshake within the timeout, or not TLS at all: dropped
        try:
            self.RequestHandlerClass(secure, client_address, self)
        finally:
            secure.close()

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()


class MjpegServer:
    def __init__(self, address: str, title: str = "edgekit", status_source=None, token: str | None = None,
                 tls: ssl.SSLContext | None = None, max_connections: int = 32, timeout: float = 10.0,
                 page: str = PAGE):
        host, port = parse_address(address)
        self.title, self.page = title, page  # page: the HTML of "/", a str.format template with {title}
        self.status_source = status_source  # a callable giving /status.json live, instead of the published dict
        self.token = token or secrets.token_urlsafe(16)
        self.generated_token = not token
        self.timeout = timeout
        self._sessions: dict[str, float] = {}  # session id -> created
        self._frame: bytes | None = None
        self._seq = 0
        self._status: dict = {}
        self._cond = threading.Condition()
        self._closed = False
        self.frames_sent = 0  # over all viewers
        self.viewers = 0
        self.unauthorized = 0
        handler = type("Handler", (_Handler,), {"owner": self, "timeout": timeout})
        try:
            self.httpd = _BoundedServer((host, port), handler, max_connections, tls, timeout)
        except OSError as exc:
            raise BadInputError(f"cannot serve on {host}:{port}: {exc.strerror}") from exc
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="edgekit-mjpeg", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        scheme = "https" if self.httpd.tls else "http"
        return f"{scheme}://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/"

    # ---- authentication -------------------------------------------------------------------------------
    def token_ok(self, candidate: str) -> bool:
        return hmac.compare_digest(candidate.encode(), self.token.encode())

    def new_session(self) -> str:
        with self._cond:
            if len(self._sessions) >= MAX_SESSIONS:  # forget the oldest: a login flood cannot grow memory
                del self._sessions[min(self._sessions, key=self._sessions.get)]
            session = secrets.token_urlsafe(24)
            self._sessions[session] = time.time()
            return session

    def session_ok(self, session: str) -> bool:
        with self._cond:
            return any(hmac.compare_digest(session.encode(), known.encode()) for known in self._sessions)

    # ---- frames -----------------------------------------------------------------------------------------
    def publish(self, jpeg: bytes, status: dict | None = None) -> None:
        with self._cond:
            self._frame, self._seq = jpeg, self._seq + 1
            if status is not None:
                self._status = status
            self._cond.notify_all()

    def set_status(self, status: dict) -> None:
        """The /status.json dict for a frame that was not encoded (nobody watching the stream)."""
        with self._cond:
            self._status = status

    def next_frame(self, after: int, timeout: float = 5.0) -> tuple[int, bytes | None]:
        with self._cond:
            self._cond.wait_for(lambda: self._seq != after or self._closed, timeout=timeout)
            return self._seq, self._frame

    def count(self, viewers: int = 0, frames_sent: int = 0, unauthorized: int = 0) -> None:
        with self._cond:
            self.viewers += viewers
            self.frames_sent += frames_sent
            self.unauthorized += unauthorized

    def status(self) -> dict:
        live = self.status_source() if self.status_source is not None else None
        with self._cond:
            return {**(live if live is not None else self._status), "viewers": self.viewers,
                    "frames_sent": self.frames_sent}

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self.httpd.shutdown()
        self.httpd.server_close()


class _Handler(BaseHTTPRequestHandler):
    owner: MjpegServer
    protocol_version = "HTTP/1.1"
    timeout = 10.0  # set per server: request arrival and every write

    def finish(self):
        try:
            super().finish()
        except OSError:
            pass  # the viewer is gone; nothing left to flush to

    def log_message(self, format, *args):  # no line per request: a flood cannot fill the console or a log
        pass

    def _send(self, code: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _authorized(self) -> bool:
        header = self.headers.get("Authorization", "")
        if header.startswith("Bearer ") and self.owner.token_ok(header[7:].strip()):
            return True
        for part in self.headers.get("Cookie", "").split(";"):
            name, _, value = part.strip().partition("=")
            if name == COOKIE and value and self.owner.session_ok(value):
                return True
        return False

    def _refuse(self, page: bool) -> None:
        self.owner.count(unauthorized=1)
        body = LOGIN.format(title=html.escape(self.owner.title)).encode() if page else b"401 Unauthorized\n"
        self._send(401, body, "text/html; charset=utf-8" if page else "text/plain",
                   {"WWW-Authenticate": 'Bearer realm="edgekit"'})

    def do_POST(self):
        if self.path.split("?", 1)[0] != "/login":
            self._send(404, b"not found\n", "text/plain")
            return
        length = self.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > 4096:
            self._send(413 if length.isdigit() else 411, b"bad request\n", "text/plain")
            return
        form = parse_qs(self.rfile.read(int(length)).decode("utf-8", "replace"))
        if not self.owner.token_ok((form.get("token") or [""])[0]):
            self._refuse(page=True)
            return
        secure = "; Secure" if self.server.tls else ""
        cookie = f"{COOKIE}={self.owner.new_session()}; HttpOnly; SameSite=Strict; Path=/{secure}"
        self._send(303, b"", "text/plain", {"Location": "/", "Set-Cookie": cookie})

    def do_GET(self):
        owner = self.owner
        path = self.path.split("?", 1)[0]
        if path == "/login":
            self._send(200, LOGIN.format(title=html.escape(owner.title)).encode(), "text/html; charset=utf-8")
            return
        if not self._authorized():
            self._refuse(page=path in ("/", "/index.html"))
            return
        if path in ("/", "/index.html"):
            self._send(200, owner.page.format(title=html.escape(owner.title)).encode(), "text/html; charset=utf-8")
        elif path == "/status.json":
            self._send(200, jsonio.dumps(owner.status()).encode(), "application/json")
        elif path == "/frame.jpg":
            _, frame = owner.next_frame(-1, timeout=0)
            if frame is None:
                self._send(503, b"no frame yet\n", "text/plain")
            else:
                self._send(200, frame, "image/jpeg")
        elif path == "/stream.mjpg":
            self._stream()
        else:
            self._send(404, b"not found\n", "text/plain")

    def _stream(self) -> None:
        owner = self.owner
        self.send_response(200)
        self.send_header("Content-Type", f"multipart/x-mixed-replace; boundary={BOUNDARY}")
        self.send_header("Cache-Control", "no-store")
        self.send_header("Connection", "close")
        self.end_headers()
        owner.count(viewers=1)
        seq = 0
        try:
            while not owner._closed:
                seq, frame = owner.next_frame(seq)
                if frame is None:
                    continue
                self.wfile.write(f"--{BOUNDARY}\r\nContent-Type: image/jpeg\r\nContent-Length: {len(frame)}\r\n\r\n"
                                 .encode() + frame + b"\r\n")
                self.wfile.flush()
                owner.count(frames_sent=1)
        except (BrokenPipeError, ConnectionResetError, socket.timeout, ssl.SSLError):
            pass  # the viewer closed the page, or stalled for longer than the timeout
        finally:
            owner.count(viewers=-1)
            self.close_connection = True
