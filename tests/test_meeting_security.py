"""EdgeAttend under attack: each test is one finding of the security review (issue 17), run against a real
`edgekit serve` process on 127.0.0.1."""
import json
import os
import signal
import socket
import time
import urllib.error

import cv2
import numpy as np
import pytest

from conftest import run_cli
from edgekit.edge_apps import protocol as p
from test_meeting import (TOKEN, SimClient, get, kinds_of, meeting, participants, refused, self_signed, status,
                          wait_until)

pytestmark = pytest.mark.network


def test_dashboard_without_the_viewer_token_gets_401_everywhere():
    with meeting() as (port, http, server):
        for path in ("/", "/stream.mjpg", "/frame.jpg", "/status.json", "/index.html"):
            for token in (None, TOKEN, "wrong"):  # the join token is not the viewer token
                with pytest.raises(urllib.error.HTTPError) as refused_request:
                    get(f"http://127.0.0.1:{http}{path}", token=token)
                assert refused_request.value.code == 401, path
                body = refused_request.value.read()
                assert b"participants" not in body and b"\xff\xd8" not in body
        assert json.loads(get(f"http://127.0.0.1:{http}/status.json").read())["count"] == 0


def test_the_dashboard_listens_on_localhost_unless_told_otherwise():
    from edgekit.edge_apps.stream import parse_address

    assert parse_address(":8080") == ("127.0.0.1", 8080)
    assert parse_address("0.0.0.0:8080") == ("0.0.0.0", 8080)
    proc = run_cli("serve", "--help")
    assert "127.0.0.1" in proc.stdout


def test_a_progressive_jpeg_bomb_delays_only_its_sender():
    """A tile whose last scan is repeated 3,000 times (a small file that would decode for seconds) is refused
    before decoding; the other member's tiles keep reaching the grid."""
    image = np.full((180, 240, 3), 90, np.uint8)  # flat: each scan is a few bytes, so 3,000 of them fit in a tile
    progressive = cv2.imencode(".jpg", image, [cv2.IMWRITE_JPEG_PROGRESSIVE, 1])[1].tobytes()
    last, end = progressive.rfind(b"\xff\xda"), progressive.rfind(b"\xff\xd9")
    bomb = progressive[:end] + progressive[last:end] * 3000 + progressive[end:]
    assert p.jpeg_scans(bomb) > p.MAX_JPEG_SCANS and len(bomb) < 2 * 1024 * 1024
    with meeting() as (port, http, server):
        good, evil = SimClient(port, "good"), SimClient(port, "evil")
        good.start()
        wait_until(lambda: participants(http).get("good", {}).get("tiles", 0) > 3)
        start = time.monotonic()
        for i in range(5):
            evil.send(p.encode_tile({"label": "attentive", "score": 0.5, "seq": i}, bomb))
            time.sleep(0.2)
        grids = good.grids
        wait_until(lambda: participants(http)["evil"]["bad_tiles"] >= 5, timeout=10)
        wait_until(lambda: good.grids > grids + 10, timeout=5)  # ~10 grids/s kept flowing
        assert time.monotonic() - start < 8
        good.stop = True


def test_idle_http_sockets_do_not_stop_participants_or_grow_threads():
    with meeting() as (port, http, server):
        idle = [socket.create_connection(("127.0.0.1", http), timeout=10) for _ in range(300)]
        try:
            time.sleep(1)
            client = SimClient(port, "steady")
            client.start()
            wait_until(lambda: client.grids > 10, timeout=15)
            threads = int(next(line.split()[1] for line in open(f"/proc/{server.pid}/status")
                               if line.startswith("Threads:")))
            assert threads < 60, threads  # at most 32 HTTP connections are served; the rest are closed at once
            client.stop = True
        finally:
            for sock in idle:
                sock.close()
        # the idle ones time out and free their slots: the dashboard answers again
        assert wait_until(lambda: get(f"http://127.0.0.1:{http}/status.json").status == 200, timeout=20)


def test_a_server_stall_longer_than_the_timeout_drops_nobody():
    with meeting() as (port, http, server):  # --timeout 4
        # the test's own clients wait for a stopped server as long as it takes (no socket timeout)
        clients = [SimClient(port, name, timeout=None) for name in ("ann", "bo")]
        for client in clients:
            client.start()
        wait_until(lambda: len(participants(http)) == 2)
        server.send_signal(signal.SIGSTOP)
        time.sleep(10)
        server.send_signal(signal.SIGCONT)
        grids = [c.grids for c in clients]
        wait_until(lambda: all(c.grids > g + 5 for c, g in zip(clients, grids)), timeout=10)
        assert len(participants(http)) == 2 and not any(c.closed for c in clients)
        for client in clients:
            client.stop = True


def test_wrong_tokens_slow_the_attacker_down():
    with meeting() as (port, http, server):
        waits = []
        for _ in range(7):
            start = time.monotonic()
            answer = refused(port, p.encode_json(p.HELLO, {"token": "guess", "name": "mallory"}))
            waits.append(time.monotonic() - start)
            assert kinds_of(answer) == [p.ERROR] and b"wrong join token" in answer
        assert max(waits[:3]) < 1.0 and waits[-1] >= 3.0, waits  # 3 free tries, then 0.5 s doubling


@pytest.mark.parametrize("hello, reason", [
    (b'{"token": "test-token", "name": ' + b"[" * 1500 + b"]" * 1500 + b"}", b"nested deeper"),  # > recursion limit
    (json.dumps({"token": 12345, "name": "x"}).encode(), b"'token' must be str"),
    (json.dumps({"token": TOKEN, "name": "x", "privacy": "yes"}).encode(), b"'privacy' must be bool"),
])
def test_malformed_hellos_get_an_error_reply(hello, reason):
    with meeting() as (port, http, server):
        answer = refused(port, p.encode(p.HELLO, hello))
        assert kinds_of(answer) == [p.ERROR] and reason in answer, answer
        assert server.poll() is None


def test_status_values_are_type_checked_and_labels_sanitized():
    with meeting() as (port, http, server):
        client = SimClient(port, "typed")
        client.paused = True
        client.send(p.encode_json(p.STATUS, {"label": "att\x1b[31mentive\x00", "score": 0.75}))
        wait_until(lambda: participants(http).get("typed", {}).get("score") == 0.75)
        assert participants(http)["typed"]["label"] == "att31mentive"
        client.send(p.encode_json(p.STATUS, {"label": "attentive", "score": True}))  # a bool is not a score
        wait_until(lambda: client.closed, timeout=10)


def test_join_fails_fast_on_an_untrusted_certificate_and_gives_up_when_full(tmp_path, binary_models):
    cert, key = self_signed(tmp_path)
    common = ["--token", TOKEN, "--model", str(binary_models["onnxruntime"]), "--source", "/dev/video99",
              "--duration", "30", "--out", str(tmp_path / "out")]
    with meeting("--tls-cert", str(cert), "--tls-key", str(key)) as (port, http, server):
        start = time.monotonic()
        proc = run_cli("join", "--server", f"127.0.0.1:{port}", "--name", "x", "--tls", *common)
        assert proc.returncode == 2 and "not trusted" in proc.stderr.strip().splitlines()[-1], proc.stderr
        assert time.monotonic() - start < 20 and "Traceback" not in proc.stderr
    with meeting("--max-clients", "1") as (port, http, server):
        first = SimClient(port, "first")
        first.start()
        proc = run_cli("join", "--server", f"127.0.0.1:{port}", "--name", "late", "--full-wait", "2", *common)
        assert proc.returncode != 0 and "meeting full" in proc.stderr.strip().splitlines()[-1], proc.stderr
        assert proc.stderr.count("retrying") >= 1
        first.stop = True


def test_the_dashboard_is_https_when_the_meeting_uses_tls(tmp_path):
    cert, key = self_signed(tmp_path)
    with meeting("--tls-cert", str(cert), "--tls-key", str(key)) as (port, http, server):
        assert status(http, cafile=str(cert))["count"] == 0
        with pytest.raises((urllib.error.URLError, ConnectionError)):  # plain HTTP is not spoken there
            get(f"http://127.0.0.1:{http}/status.json")
        silent = socket.create_connection(("127.0.0.1", http), timeout=30)  # never starts the handshake
        start = time.monotonic()
        try:
            assert silent.recv(1) == b""
        except ConnectionResetError:
            pass  # closed either way
        assert time.monotonic() - start < 15  # dropped after the 10 s timeout, not held
        silent.close()
        quiet = socket.create_connection(("127.0.0.1", port), timeout=30)  # the TLS meeting port, no handshake
        start = time.monotonic()
        try:
            assert quiet.recv(1) == b""
        except ConnectionResetError:
            pass
        assert time.monotonic() - start < 10  # 5 s handshake timeout (asyncio's default would be 60 s)
        quiet.close()
        assert os.path.exists(cert)


def test_connection_log_lines_are_rate_limited(caplog):
    import logging

    from edgekit.core.ratelimit import RateLimitedLog

    logs = RateLimitedLog(logging.getLogger("edgekit.test.flood"), per_minute=5)
    with caplog.at_level(logging.INFO, logger="edgekit.test.flood"):
        for i in range(1000):
            logs.warning("closing peer %d: bad magic", i)
    assert len(caplog.records) == 5 and logs.dropped == 995
