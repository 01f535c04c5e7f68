"""Fleet telemetry against a real Eclipse Mosquitto broker (Debian package `mosquitto`, installed by
tools/system-packages.sh) on a loopback port, with per-device passwords, and real `edgekit` processes."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import MEGAMIND, default_sigint, free_port, run_cli

USERS = {"pi-01": "pw-device-1", "pi-02": "pw-device-2", "reader": "pw-reader"}


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A mosquitto that refuses anonymous clients; yields its port."""
    folder = tmp_path_factory.mktemp("mosquitto")
    passwords = folder / "passwords"
    for i, (user, password) in enumerate(USERS.items()):
        subprocess.run(["mosquitto_passwd", "-b", *([] if i else ["-c"]), str(passwords), user, password], check=True)
    passwords.chmod(0o600)
    port = free_port()
    config = folder / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\nallow_anonymous false\npassword_file {passwords}\n"
                      "persistence false\n" + ("user root\n" if os.geteuid() == 0 else ""))
    proc = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            break
        except OSError:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "mosquitto did not open its port"
            time.sleep(0.1)
    yield port
    proc.terminate()
    proc.wait(10)


def cli_env(user: str) -> dict:
    return {**os.environ, "EDGEKIT_FLEET_PASSWORD": USERS[user]}


def fleet_rows(port: int, prefix: str, wait: float = 0.5) -> list[dict]:
    proc = subprocess.run([sys.executable, "-m", "edgekit", "fleet", "status", "--broker",
                           f"mqtt://reader@127.0.0.1:{port}/{prefix}", "--wait", str(wait), "--json"],
                          capture_output=True, text=True, timeout=60, env=cli_env("reader"))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def test_run_publishes_telemetry_that_fleet_status_reads_back(broker, exported, tmp_path):
    folder, _ = exported
    model = folder / "model.onnx"
    proc = subprocess.run([sys.executable, "-m", "edgekit", "run", "--model", str(model), "--source", str(MEGAMIND),
                           "--max-frames", "60", "--no-save-video", "--out", str(tmp_path / "run"),
                           "--fleet", f"mqtt://pi-01@127.0.0.1:{broker}/plant-a", "--fleet-interval", "0.2",
                           "--device-id", "pi-01"], capture_output=True, text=True, timeout=300, env=cli_env("pi-01"))
    assert proc.returncode == 0, proc.stderr
    assert "fleet telemetry every 0.2 s to mqtt://pi-01@127.0.0.1" in proc.stderr
    rows = fleet_rows(broker, "plant-a")
    assert [row["device"] for row in rows] == ["pi-01"]
    row = rows[0]
    assert row["online"] is False  # it said goodbye at the end of the video
    telemetry = row["telemetry"]
    from edgekit.core.spec import sha256_file

    assert telemetry["model"] == {"name": "model.onnx", "sha256": sha256_file(model)[:16], "runtime": "onnxruntime"}
    assert telemetry["frames"] == 60 and telemetry["dropped_frames"] == 0 and telemetry["rss_mb"] > 0
    assert "infer" in telemetry["stages"] and telemetry["stages"]["infer"]["p50_ms"] > 0
    # namespaced: another prefix on the same broker sees nothing of plant-a
    assert fleet_rows(broker, "plant-b") == []


def test_a_live_device_shows_online_within_seconds_and_offline_after_ctrl_c(broker, exported, tmp_path):
    folder, _ = exported
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "run", "--model", str(folder / "model_int8.onnx"),
                             "--source", str(MEGAMIND), "--loop", "--realtime", "--no-save-video",
                             "--out", str(tmp_path / "run"), "--fleet", f"mqtt://pi-02@127.0.0.1:{broker}/plant-c",
                             "--fleet-interval", "0.3", "--device-id", "pi-02"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=cli_env("pi-02"),
                            preexec_fn=default_sigint)
    try:
        deadline, rows = time.monotonic() + 60, []
        while time.monotonic() < deadline:
            rows = fleet_rows(broker, "plant-c", wait=0.3)
            if rows and rows[0]["online"] and (rows[0]["telemetry"] or {}).get("fps", 0) > 0:
                break
        assert rows and rows[0]["online"] is True, rows
        telemetry = rows[0]["telemetry"]
        assert 5 < telemetry["fps"] < 40, telemetry  # --realtime: about the video's own 24 frames per second
        assert time.time() - telemetry["time"] < 5
        proc.send_signal(signal.SIGINT)
        proc.wait(60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode in (0, 130), proc.stderr
    assert fleet_rows(broker, "plant-c")[0]["online"] is False


def test_the_reader_drops_what_a_hostile_publisher_sends(broker):
    """Oversized, non-JSON and non-object payloads are ignored; wildcard-free device names only."""
    import paho.mqtt.client as mqtt

    from edgekit.edge_apps.fleet import MAX_PAYLOAD, FleetTarget, read_fleet

    os.environ["EDGEKIT_FLEET_PASSWORD"] = USERS["pi-01"]
    try:
        from edgekit.edge_apps.fleet import connect

        target = FleetTarget.parse(f"mqtt://pi-01@127.0.0.1:{broker}/plant-d")
        client = connect(target, "hostile")
        for device, payload in (("big", b"{" + b" " * MAX_PAYLOAD + b"}"), ("text", b"not json"),
                                ("list", b"[1, 2]"), ("good", json.dumps({"fps": 3.0}).encode())):
            client.publish(target.topic(device, "telemetry"), payload, qos=1, retain=True).wait_for_publish(5)
        client.publish(target.topic("good", "status"), b"online", qos=1, retain=True).wait_for_publish(5)
        client.disconnect()
        client.loop_stop()
        rows = {row["device"]: row for row in read_fleet(target, wait=0.5)}
    finally:
        del os.environ["EDGEKIT_FLEET_PASSWORD"]
    assert rows["good"] == {"device": "good", "online": True, "telemetry": {"fps": 3.0}, "doctor": None}
    assert "big" not in rows  # dropped before it is parsed
    assert rows["text"]["telemetry"] is None and rows["list"]["telemetry"] is None
    assert mqtt.topic_matches_sub(target.topic("+", "telemetry"), "plant-d/devices/good/telemetry")


def test_fleet_refuses_bad_urls_and_wrong_passwords_in_one_line(broker, tmp_path):
    for url, message in ((f"mqtt://reader@127.0.0.1:{broker}/a/+", "prefix levels must be"),
                         (f"mqtt://reader:pw@127.0.0.1:{broker}/a", "EDGEKIT_FLEET_PASSWORD"),
                         (f"http://127.0.0.1:{broker}/a", "must look like mqtt://"),
                         (f"mqtt://127.0.0.1:{broker}", "names no topic prefix")):
        proc = run_cli("fleet", "status", "--broker", url)
        assert proc.returncode == 2 and message in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1
    proc = subprocess.run([sys.executable, "-m", "edgekit", "fleet", "status", "--broker",
                           f"mqtt://reader@127.0.0.1:{broker}/a"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "EDGEKIT_FLEET_PASSWORD": "wrong"})
    assert proc.returncode == 2 and "refused the connection: Not authorized" in proc.stderr
    proc = run_cli("run", "--model", "x.onnx", "--fleet", f"mqtt://pi-01@127.0.0.1:{broker}/a", "--device-id", "a/b",
                   "--out", str(tmp_path / "r"))
    assert proc.returncode == 2 and "--device-id must be" in proc.stderr
    nobody = free_port()
    proc = run_cli("fleet", "status", "--broker", f"mqtt://127.0.0.1:{nobody}/a")
    assert proc.returncode == 2 and "cannot reach the fleet broker" in proc.stderr


def test_join_publishes_its_meeting_figures(broker, binary_models, faces_video, tmp_path):
    port, http = free_port(), free_port()
    server = subprocess.Popen([sys.executable, "-m", "edgekit", "serve", "--port", str(port), "--http",
                               f"127.0.0.1:{http}", "--token", "fleet-test-token", "--viewer-token", "v" * 24],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        proc = subprocess.run([sys.executable, "-m", "edgekit", "join", "--server", f"127.0.0.1:{port}", "--name",
                               "ann", "--token", "fleet-test-token", "--model", str(binary_models["onnxruntime"]),
                               "--source", str(faces_video), "--loop", "--duration", "6", "--out", str(tmp_path),
                               "--fleet", f"mqtt://pi-01@127.0.0.1:{broker}/meetings", "--fleet-interval", "0.3",
                               "--device-id", "laptop-ann"], capture_output=True, text=True, timeout=120,
                              env=cli_env("pi-01"))
    finally:
        server.terminate()
        server.wait(30)
    assert proc.returncode == 0, proc.stderr
    [row] = fleet_rows(broker, "meetings")
    telemetry = row["telemetry"]
    assert row["device"] == "laptop-ann" and row["online"] is False
    assert telemetry["app"] == "join" and telemetry["sent"] > 0 and telemetry["frames"] >= telemetry["sent"]
    assert telemetry["label"] in ("attentive", "not attentive") and "infer" in telemetry["stages"]
    assert telemetry["model"]["name"] == Path(binary_models["onnxruntime"]).name


def test_doctor_publishes_its_checks_once(broker, exported):
    folder, _ = exported
    proc = subprocess.run([sys.executable, "-m", "edgekit", "doctor", str(folder / "model.onnx"), "--fleet",
                           f"mqtt://pi-02@127.0.0.1:{broker}/plant-e", "--device-id", "pi-02"],
                          capture_output=True, text=True, timeout=120, env=cli_env("pi-02"))
    assert "published to mqtt://pi-02@127.0.0.1" in proc.stderr, proc.stderr
    [row] = fleet_rows(broker, "plant-e")
    checks = {check["name"]: check for check in row["doctor"]["checks"]}
    assert row["device"] == "pi-02" and checks["model"]["status"] == "ok" and "platform" in checks
    assert row["telemetry"] is None  # a report, not a running device
