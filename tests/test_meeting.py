"""EdgeAttend with real processes: `edgekit serve`, real `edgekit join` clients on a video, SIGKILL and rejoin,
hostile connections, and the dashboard in headless Chromium."""
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import urllib.request
from contextlib import contextmanager

import numpy as np
import pytest

from browser import Browser
from conftest import free_port
from edgekit.edge_apps import protocol as p

# Tier: servers and clients talking over 127.0.0.1.
pytestmark = pytest.mark.network

TOKEN = "test-token"
VIEWER = "viewer-secret"  # the dashboard's token, different from the join token


def get(url: str, token: str | None = VIEWER, timeout: float = 5, cafile: str | None = None):
    """GET with the viewer token as a bearer header (None: without any); HTTPS trusting ``cafile``."""
    import ssl

    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    context = ssl.create_default_context(cafile=cafile) if cafile else None
    return urllib.request.urlopen(request, timeout=timeout, context=context)


@contextmanager
def meeting(*extra: str):
    port, http = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "serve", "--port", str(port), "--http",
                             f"127.0.0.1:{http}", "--token", TOKEN, "--viewer-token", VIEWER, "--timeout", "4",
                             *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while proc.poll() is None and "meeting on" not in line:
            line = proc.stderr.readline()
        assert "meeting on" in line, line
        yield port, http, proc
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def status(http: int, cafile: str | None = None) -> dict:
    """The dashboard's /status.json (over HTTPS, trusting ``cafile``, when the meeting runs TLS)."""
    scheme = "https" if cafile else "http"
    return json.loads(get(f"{scheme}://127.0.0.1:{http}/status.json", cafile=cafile).read())


def self_signed(folder) -> tuple:
    """(certificate, key) PEM files of a one-day self-signed certificate for 127.0.0.1, made by openssl."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    return cert, key


def wait_until(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except OSError:  # the dashboard is not listening yet
            value = None
        if value:
            return value
        time.sleep(0.2)
    raise AssertionError("condition not reached in time")


def jpeg(colour: int) -> bytes:
    import cv2

    image = np.full((180, 240, 3), colour, np.uint8)
    cv2.putText(image, str(colour), (60, 100), cv2.FONT_HERSHEY_SIMPLEX, 2, (255, 255, 255), 3)
    return cv2.imencode(".jpg", image)[1].tobytes()


class SimClient(threading.Thread):
    """Speaks the protocol from a socket: tiles at ``fps`` (changing pictures), counts grids."""

    def __init__(self, port: int, name: str, fps: float = 10.0, timeout: float | None = 10.0):
        super().__init__(daemon=True)
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(p.encode_json(p.HELLO, {"token": TOKEN, "name": name}))
        kind, payload = p.recv_message(self.sock)
        assert kind == p.WELCOME, payload
        self.sock.settimeout(timeout)  # before the receive thread starts: a blocked recv keeps its old timeout
        self.fps, self.grids, self.stop, self.closed, self.paused = fps, 0, False, False, False
        self.lock = threading.Lock()  # one writer at a time on the socket
        self.frames = [jpeg(c) for c in range(20, 240, 20)]
        threading.Thread(target=self._receive, daemon=True).start()

    def _receive(self):
        try:
            while True:
                kind, _ = p.recv_message(self.sock)
                self.grids += kind == p.GRID
        except (OSError, ConnectionError):
            self.closed = True

    def run(self):
        i = 0
        while not self.stop:
            if self.paused:  # the server keeps only the newest tile: pause so that a test's own tile is seen
                time.sleep(0.05)
                continue
            self.send(p.encode_tile({"label": "attentive", "score": 0.9, "seq": i}, self.frames[i % len(self.frames)]))
            i += 1
            time.sleep(1 / self.fps)

    def send(self, message: bytes):
        with self.lock:
            self.sock.sendall(message)


def refused(port: int, data: bytes, close: bool = True) -> bytes:
    """Send raw bytes on a fresh connection; returns what the server answered before closing it."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(data)
        if close:
            s.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := s.recv(4096):
            answer += chunk
        return answer


def kinds_of(answer: bytes) -> list[int]:
    """The message types in a byte stream the server sent."""
    kinds, i = [], 0
    while i + p.HEADER.size <= len(answer):
        kind, length = p.parse_header(answer[i:i + p.HEADER.size], 1 << 24)
        kinds.append(kind)
        i += p.HEADER.size + length
    return kinds


def participants(http: int, cafile: str | None = None) -> dict:
    return {q["name"]: q for q in status(http, cafile)["participants"]}


def test_protocol_round_trip_and_refusals():
    meta, data = p.decode_tile(p.encode_tile({"label": "attentive", "score": 0.5}, b"\xff\xd8jpeg")[8:])
    assert meta == {"label": "attentive", "score": 0.5} and data == b"\xff\xd8jpeg"
    header = p.encode(p.GRID, b"x" * 10)[:8]
    assert p.parse_header(header, 100) == (p.GRID, 10)
    for bad, reason in ((b"XX" + header[2:], "bad magic"), (header[:2] + b"\x07" + header[3:], "version"),
                        (p.HEADER.pack(p.MAGIC, p.VERSION, 99, 0), "unknown message type"),
                        (p.HEADER.pack(p.MAGIC, p.VERSION, p.TILE, 2 ** 31), "exceeds the limit"),
                        (p.HEADER.pack(p.MAGIC, p.VERSION, p.HELLO, 5000), "exceeds the limit")):
        with pytest.raises(p.ProtocolError, match=reason):
            p.parse_header(bad, 1 << 20)
    assert p.sanitize_name("<script>alert(1)</script>" + "x" * 40) == "scriptalert1scriptxxxxxxxxxxxxxx"
    assert p.sanitize_name("\x00\n") == "guest"


def test_real_clients_on_video_sigkill_one_and_it_rejoins(binary_models, faces_video, tmp_path):
    def join(name):
        return subprocess.Popen([sys.executable, "-m", "edgekit", "join", "--server", f"127.0.0.1:{port}", "--name",
                                 name, "--token", TOKEN, "--model", str(binary_models["onnxruntime"]), "--source",
                                 str(faces_video), "--loop", "--fps", "5", "--threads", "1",
                                 "--out", str(tmp_path / name)], stdout=subprocess.DEVNULL,
                                stderr=open(tmp_path / f"{name}.log", "a"))

    with meeting() as (port, http, server):
        clients = {name: join(name) for name in ("ann", "ben", "cat")}
        try:
            wait_until(lambda: set(participants(http)) == {"ann", "ben", "cat"})
            before = participants(http)
            clients["ben"].send_signal(signal.SIGKILL)
            clients["ben"].wait()
            wait_until(lambda: "ben" not in participants(http), timeout=15)  # the grid shows it leave
            for name in ("ann", "cat"):  # the others' streams go on meanwhile
                wait_until(lambda: participants(http)[name]["tiles"] >= before[name]["tiles"] + 5, timeout=20)
            middle = participants(http)
            clients["ben"] = join("ben")
            wait_until(lambda: "ben" in participants(http))  # ... and rejoin
            for name in ("ann", "cat"):
                wait_until(lambda: participants(http)[name]["tiles"] >= middle[name]["tiles"] + 5, timeout=20)
            events = [(e["type"], e["name"]) for e in status(http)["events"]]
            assert events.count(("join", "ben")) == 2 and ("leave", "ben") in events
            assert server.poll() is None
        finally:
            for proc in clients.values():
                proc.terminate()
                proc.wait(timeout=30)


def test_hostile_connections_are_closed_and_the_others_carry_on(tmp_path):
    with meeting("--max-message-kb", "256") as (port, http, server):
        good = SimClient(port, "good")
        good.start()
        wait_until(lambda: participants(http).get("good", {}).get("tiles", 0) > 3)
        # every case sends exactly what the server reads before it gives up, so the close is clean (no RST)
        answers = {
            "random bytes": refused(port, b"\x00" + os.urandom(7)),
            "wrong token": refused(port, p.encode_json(p.HELLO, {"token": "nope", "name": "mallory"})),
            "huge length prefix": refused(port, p.HEADER.pack(p.MAGIC, p.VERSION, p.HELLO, 2 ** 31 - 1)),
            "truncated frame": refused(port, p.encode_json(p.HELLO, {"token": TOKEN, "name": "cut"})
                                       + p.encode(p.TILE, b"x" * 1000)[:300]),
            "oversized tile": refused(port, p.encode_json(p.HELLO, {"token": TOKEN, "name": "big"})
                                      + p.HEADER.pack(p.MAGIC, p.VERSION, p.TILE, 300_000)),
        }
        assert kinds_of(answers["random bytes"]) == [p.ERROR] and b"bad magic" in answers["random bytes"]
        assert kinds_of(answers["wrong token"]) == [p.ERROR] and b"wrong join token" in answers["wrong token"]
        assert kinds_of(answers["huge length prefix"]) == [p.ERROR]
        # (a grid may go out in the moment these two are members)
        truncated, oversized = kinds_of(answers["truncated frame"]), kinds_of(answers["oversized tile"])
        assert truncated[0] == p.WELCOME and p.ERROR not in truncated  # closed at the early end of data
        assert oversized[0] == p.WELCOME and oversized[-1] == p.ERROR
        assert b"exceeds the limit" in answers["huge length prefix"] + answers["oversized tile"]
        # an invalid JPEG, and a valid one whose header claims 30000x30000 pixels (a few KB that would decode
        # to 2.7 GB): counted, not decoded, the previous tile stays, the connection stays
        bomb = bytearray(jpeg(50))
        assert p.jpeg_size(bytes(bomb)) == (240, 180)
        sof = next(i for i in range(2, len(bomb)) if bomb[i] == 0xFF and bomb[i + 1] == 0xC0)
        bomb[sof + 5:sof + 9] = struct.pack(">HH", 30000, 30000)
        assert p.jpeg_size(bytes(bomb)) == (30000, 30000)
        good.paused = True
        for n, tile in enumerate((b"\xff\xd8 this is not a jpeg", bytes(bomb)), start=1):
            good.send(p.encode_tile({"label": "attentive", "score": 0.5}, tile))
            wait_until(lambda: participants(http)["good"]["bad_tiles"] >= n, timeout=3)
        good.paused = False
        tiles = participants(http)["good"]["tiles"]
        wait_until(lambda: participants(http)["good"]["tiles"] > tiles + 5, timeout=10)
        final = status(http)
        assert server.poll() is None and not good.closed and good.grids > 0
        assert final["count"] == 1 and final["rejected"] >= 4  # random, token, huge, oversized (truncated = EOF)
        good.stop = True


@pytest.mark.browser
def test_dashboard_in_headless_chromium_shows_the_grid_and_the_clients():
    with meeting() as (port, http, server):
        clients = [SimClient(port, name) for name in ("dora", "emil")]
        for c in clients:
            c.start()
        wait_until(lambda: len(participants(http)) == 2)
        with Browser(f"http://127.0.0.1:{http}/login") as browser:
            browser.login(VIEWER)
            assert browser.image_width("live") > 0
            seen = browser.count_frames("live", polls=15)
        assert seen["distinct"] >= 3, seen  # the grid image keeps updating in the page
        assert "dora" in seen["text"] and "emil" in seen["text"] and '"count": 2' in seen["text"]
        with Browser(f"http://127.0.0.1:{http}/") as stranger:  # a second browser, without the token
            page = stranger.wait_for("document.body && document.body.innerText")
            assert "401" in page and stranger.image_width("live", timeout=2) == 0
            assert stranger.evaluate("fetch('/stream.mjpg').then(r => r.status)") == 401
        for c in clients:
            c.stop = True


def test_privacy_client_sends_labels_only(tmp_path):
    with meeting() as (port, http, server):
        with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
            s.sendall(p.encode_json(p.HELLO, {"token": TOKEN, "name": "quiet", "privacy": True}))
            assert p.recv_message(s)[0] == p.WELCOME
            for _ in range(5):
                s.sendall(p.encode_json(p.STATUS, {"label": "attentive", "score": 0.8}))
                time.sleep(0.1)
            me = wait_until(lambda: participants(http).get("quiet"))
            assert me["privacy"] and me["label"] == "attentive" and me["tiles"] == 0
            kind, grid = p.recv_message(s)
            while kind != p.GRID:
                kind, grid = p.recv_message(s)
            assert grid[:2] == b"\xff\xd8"  # participants get the clean grid back
            s.sendall(p.encode_json(p.STATUS, {"label": "x", "score": 7}))  # score out of range: closed
            kinds = []
            with pytest.raises(ConnectionError):
                while len(kinds) < 100:
                    kinds.append(p.recv_message(s)[0])
            assert kinds[-1] == p.ERROR and set(kinds[:-1]) <= {p.GRID}


def test_join_without_server_or_camera_keeps_working(binary_models, tmp_path):
    """No camera -> black tile; server down at first -> retries with backoff, joins when it appears; the
    shared grid it receives is shown on its own MJPEG address."""
    port, view = free_port(), free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "join", "--server", f"127.0.0.1:{port}", "--name",
                             "late", "--token", TOKEN, "--model", str(binary_models["onnxruntime"]), "--source",
                             "/dev/video99", "--duration", "12", "--serve", f"127.0.0.1:{view}", "--viewer-token",
                             VIEWER, "--out",
                             str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    http = free_port()
    server = subprocess.Popen([sys.executable, "-m", "edgekit", "serve", "--port", str(port), "--http",
                               f"127.0.0.1:{http}", "--token", TOKEN, "--viewer-token", VIEWER],
                              stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    try:
        def labelled():  # joined, and past the "waiting" it shows until its first tile arrives
            me = participants(http).get("late") if server.poll() is None else None
            return me if me and me["label"] != "waiting" else None

        me = wait_until(labelled, timeout=30)
        assert me["label"] == "not attentive" and me["score"] == 0.0
        grid = wait_until(lambda: get(f"http://127.0.0.1:{view}/frame.jpg").read(),
                          timeout=10)
        assert grid[:2] == b"\xff\xd8"
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert proc.returncode == 0, stderr
    result = json.loads(stdout.strip().splitlines()[-1])
    assert result["camera"] is False and result["connects"] == 1 and result["grids_received"] > 0
    assert "camera unavailable" in stderr and "retrying" in stderr


def test_tls_meeting_and_a_plain_client_is_refused(tmp_path):
    """--tls-cert/--tls-key on the server, --tls --tls-ca on the client (a self-signed certificate)."""
    from edgekit.edge_apps.meeting_client import MeetingClient

    cert, key = self_signed(tmp_path)
    with meeting("--tls-cert", str(cert), "--tls-key", str(key)) as (port, http, server):
        client = MeetingClient(f"127.0.0.1:{port}", "secure", TOKEN, tls=True, tls_ca=str(cert))
        client.connect()
        assert client.send(p.encode_tile({"label": "attentive", "score": 0.7}, jpeg(90)))
        ca = str(cert)  # the dashboard is HTTPS too
        wait_until(lambda: participants(http, ca).get("secure", {}).get("label") == "attentive", timeout=10)
        wait_until(lambda: client.grids > 0, timeout=10)
        client.close()
        plain = MeetingClient(f"127.0.0.1:{port}", "plain", TOKEN)
        with pytest.raises((p.ProtocolError, OSError)):
            plain.connect()  # TLS server, plain client: the handshake fails, nobody joins
        assert "plain" not in participants(http, ca) and server.poll() is None


def test_join_with_duration_and_loop_ends_cleanly_twenty_times_in_a_row(binary_models, faces_video, tmp_path,
                                                                         full_meeting_disk):
    """`join --duration 4 --loop` used to crash at exit (a capture released while its reader was still
    reading: SIGSEGV in 4 of 6 runs). Twenty runs in a row against a real server: every one exits 0 with its
    summary, and one more with --out on a full disk ends with one error line."""
    with meeting() as (port, http, server):
        for run in range(20):
            out = tmp_path / f"run{run}"
            proc = subprocess.run([sys.executable, "-m", "edgekit", "join", "--server", f"127.0.0.1:{port}",
                                   "--name", f"p{run}", "--token", TOKEN, "--model", str(binary_models["onnxruntime"]),
                                   "--source", str(faces_video), "--loop", "--duration", "4", "--threads", "1",
                                   "--out", str(out)], capture_output=True, text=True, timeout=120)
            assert proc.returncode == 0, (run, proc.returncode, proc.stderr[-2000:])
            assert "Traceback" not in proc.stderr and json.loads((out / "summary.json").read_text())["sent"] > 0
        if full_meeting_disk is not None:
            proc = subprocess.run([sys.executable, "-m", "edgekit", "join", "--server", f"127.0.0.1:{port}",
                                   "--name", "full", "--token", TOKEN, "--model", str(binary_models["onnxruntime"]),
                                   "--source", str(faces_video), "--loop", "--duration", "4", "--threads", "1",
                                   "--out", str(full_meeting_disk)], capture_output=True, text=True, timeout=120)
            assert proc.returncode in (1, 2) and "Traceback" not in proc.stderr, proc.stderr[-2000:]
            assert proc.stderr.strip().splitlines()[-1].startswith("error:"), proc.stderr[-1000:]
            assert not list(full_meeting_disk.iterdir())
        assert server.poll() is None


@pytest.fixture
def full_meeting_disk(tmp_path):
    """A filled 64 KB tmpfs for the full-disk join (conftest.full_disk_folder); None where it cannot be
    mounted, and the test says so."""
    from conftest import full_disk_folder

    with full_disk_folder(tmp_path / "full", "64k") as (folder, reason):
        if folder is None:
            print(f"full-disk join not run: {reason}")
        yield folder
