"""A small MJPEG-over-HTTP server: watch the annotated stream in any browser, no plugin, no codec.

Endpoints: ``/`` (a page showing the stream and a status panel), ``/stream.mjpg`` (multipart/x-mixed-replace
JPEG frames, the format browsers and VLC play directly), ``/frame.jpg`` (the newest frame) and
``/status.json``. Publishing never blocks the pipeline: each viewer is served by its own thread and always
gets the newest frame; a slow viewer skips frames instead of holding anyone up.
"""
from __future__ import annotations

import html
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from edgekit.core.errors import BadInputError

BOUNDARY = "edgekitframe"

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


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``:PORT`` (all interfaces) -> (host, port)."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise BadInputError(f"--serve needs HOST:PORT or :PORT, got {text!r}")
    return host or "0.0.0.0", int(port)


class MjpegServer:
    def __init__(self, address: str, title: str = "edgekit", status_source=None):
        host, port = parse_address(address)
        self.title = title
        self.status_source = status_source  # a callable giving /status.json live, instead of the published dict
        self._frame: bytes | None = None
        self._seq = 0
        self._status: dict = {}
        self._cond = threading.Condition()
        self._closed = False
        self.frames_sent = 0  # over all viewers
        self.viewers = 0
        handler = type("Handler", (_Handler,), {"owner": self})
        try:
            self.httpd = ThreadingHTTPServer((host, port), handler)
        except OSError as exc:
            raise BadInputError(f"cannot serve on {host}:{port}: {exc.strerror}") from exc
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, name="edgekit-mjpeg", daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{'127.0.0.1' if host == '0.0.0.0' else host}:{port}/"

    def publish(self, jpeg: bytes, status: dict | None = None) -> None:
        with self._cond:
            self._frame, self._seq = jpeg, self._seq + 1
            if status is not None:
                self._status = status
            self._cond.notify_all()

    def next_frame(self, after: int, timeout: float = 5.0) -> tuple[int, bytes | None]:
        with self._cond:
            self._cond.wait_for(lambda: self._seq != after or self._closed, timeout=timeout)
            return self._seq, self._frame

    def count(self, viewers: int = 0, frames_sent: int = 0) -> None:
        with self._cond:
            self.viewers += viewers
            self.frames_sent += frames_sent

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

    def log_message(self, format, *args):  # viewers come and go; not worth a line each on the console
        pass

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        owner = self.owner
        path = self.path.split("?", 1)[0]
        if path in ("/", "/index.html"):
            self._send(200, PAGE.format(title=html.escape(owner.title)).encode(), "text/html; charset=utf-8")
        elif path == "/status.json":
            self._send(200, json.dumps(owner.status()).encode(), "application/json")
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
        except (BrokenPipeError, ConnectionResetError):
            pass  # the viewer closed the page
        finally:
            owner.count(viewers=-1)
            self.close_connection = True

