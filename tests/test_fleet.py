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

from browser import Browser
from tests.conftest import MEGAMIND, default_sigint, free_port, run_cli

pytestmark = pytest.mark.network  # a broker and clients on 127.0.0.1
USERS = {"pi-01": "pw-device-1", "pi-02": "pw-device-2", "reader": "pw-reader"}


def start_mosquitto(folder: Path, listener: str = "") -> tuple[subprocess.Popen, int]:
    """A mosquitto on a free loopback port that refuses anonymous clients (USERS' passwords); ``listener``:
    more lines for the listener (TLS)."""
    passwords = folder / "passwords"
    for i, (user, password) in enumerate(USERS.items()):
        subprocess.run(["mosquitto_passwd", "-b", *([] if i else ["-c"]), str(passwords), user, password], check=True)
    passwords.chmod(0o600)
    port = free_port()
    config = folder / "mosquitto.conf"
    config.write_text(f"listener {port} 127.0.0.1\n{listener}allow_anonymous false\npassword_file {passwords}\n"
                      "persistence false\n" + ("user root\n" if os.geteuid() == 0 else ""))
    proc = subprocess.Popen(["mosquitto", "-c", str(config)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, port
        except OSError:
            assert proc.poll() is None, proc.stdout.read().decode()
            assert time.monotonic() < deadline, "mosquitto did not open its port"
            time.sleep(0.1)


@pytest.fixture(scope="session")
def broker(tmp_path_factory):
    """A plain-TCP mosquitto with per-user passwords; yields its port."""
    proc, port = start_mosquitto(tmp_path_factory.mktemp("mosquitto"))
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
    assert rows["good"]["online"] is True and rows["good"]["telemetry"] == {"fps": 3.0}
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


def bundle(folder: Path, model: Path) -> Path:
    """A fleet bundle: the model as model.onnx with its spec beside it."""
    import shutil

    folder.mkdir(parents=True)
    shutil.copy(model, folder / "model.onnx")
    shutil.copy(f"{model}.edgekit.json", folder / "model.onnx.edgekit.json")
    return folder


def publish_raw(port: int, prefix: str, group: str, message: dict) -> None:
    """An announcement sent by hand (tampered ones): a client that speaks MQTT, not edgekit."""
    from edgekit.edge_apps.fleet import FleetTarget, connect
    from edgekit.edge_apps.rollout import canonical

    os.environ["EDGEKIT_FLEET_PASSWORD"] = USERS["pi-01"]
    try:
        client = connect(FleetTarget.parse(f"mqtt://pi-01@127.0.0.1:{port}/{prefix}"), "tamperer")
    finally:
        del os.environ["EDGEKIT_FLEET_PASSWORD"]
    client.publish(f"{prefix}/rollout/{group}", canonical(message), qos=1, retain=True).wait_for_publish(5)
    client.disconnect()
    client.loop_stop()


def wait_rows(port: int, prefix: str, done, timeout: float = 60.0) -> dict:
    deadline, rows = time.monotonic() + timeout, {}
    while time.monotonic() < deadline:
        rows = {row["device"]: row for row in fleet_rows(port, prefix, wait=0.3)}
        if done(rows):
            return rows
    raise AssertionError(f"fleet never reached the expected state: {json.dumps(rows, default=str)[:3000]}")


def test_signed_rollout_to_half_of_twenty_devices_tampering_and_a_failing_health_check(broker, exported, tmp_path):
    """20 device processes run the real agent (onnxruntime; importing torch fails in them). A signed bundle to 50%: exactly the
    devices the rollout's hash selects switch, and `fleet status` shows their model hash within 5 s. A
    manifest altered after signing, and one signed by another key, are refused by all. A signed bundle whose
    model does not reproduce its health samples fails on every device and leaves the model it had."""
    from edgekit.core.spec import sha256_file
    from edgekit.edge_apps.rollout import build_manifest, keygen, rollout_id, selected, sign

    folder, _ = exported
    key, public = keygen(tmp_path / "fleet.key")
    other_key, _ = keygen(tmp_path / "other.key")
    v1 = bundle(tmp_path / "v1", folder / "model.onnx")
    v2 = bundle(tmp_path / "v2", folder / "model_int8.onnx")
    devices = [f"dev-{i:02d}" for i in range(20)]
    torch_free = "import sys; sys.modules['torch'] = None\nfrom edgekit.cli import main\nsys.argv[0] = 'edgekit'\nmain()"
    agents = [subprocess.Popen([sys.executable, "-c", torch_free, "fleet", "agent", "--broker",
                                f"mqtt://pi-01@127.0.0.1:{broker}/factory", "--group", "line-1", "--trust", str(public),
                                "--dir", str(tmp_path / "devices" / name), "--device-id", name, "--interval", "0.5",
                                "--duration", "300"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                               env=cli_env("pi-01")) for name in devices]  # import torch would fail in them
    try:
        wait_rows(broker, "factory", lambda rows: all(rows.get(d, {}).get("agent_online") for d in devices))
        publisher = subprocess.Popen([sys.executable, "-m", "edgekit", "fleet", "publish", str(v1), "--broker",
                                      f"mqtt://pi-01@127.0.0.1:{broker}/factory", "--to", "line-1", "--key", str(key),
                                      "--percent", "50", "--duration", "15"], stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, env=cli_env("pi-01"))
        announced = publisher.stderr.readline()  # "rollout ID of model.onnx to 50% of line-1; serving ..."
        started = time.monotonic()
        assert announced.startswith("rollout "), announced + publisher.stderr.read()
        rid = announced.split()[1]
        chosen = {d for d in devices if selected(d, rid, 50)}
        assert 3 <= len(chosen) <= 17  # the hash spreads devices; this rollout id gives this share
        v1_hash = sha256_file(v1 / "model.onnx")[:16]
        rows = wait_rows(broker, "factory", lambda rows: all(
            (rows[d].get("agent") or {}).get("model") and rows[d]["agent"]["model"]["sha256"] == v1_hash
            for d in chosen), timeout=5)
        assert time.monotonic() - started < 5
        assert publisher.wait(60) == 0 and publisher.stdout.read().strip() == rid
        for d in devices:
            link = tmp_path / "devices" / d / "current"
            assert link.is_symlink() == (d in chosen), d
            state = rows[d]["rollout"] or {}
            assert state.get("state") == ("active" if d in chosen else "skipped"), (d, state)
        # tampered: a file hash changed after signing; and a manifest signed by a key the devices do not trust
        manifest = build_manifest(v2)
        forged = json.loads(json.dumps(manifest))
        forged["files"]["model.onnx"]["sha256"] = "0" * 64
        for message in ({"id": rollout_id(forged), "manifest": forged, "signature": sign(manifest, key),
                         "url": "http://127.0.0.1:9/x/", "percent": 100},
                        {"id": rollout_id(manifest), "manifest": manifest, "signature": sign(manifest, other_key),
                         "url": "http://127.0.0.1:9/x/", "percent": 100}):
            publish_raw(broker, "factory", "line-1", message)
            rows = wait_rows(broker, "factory", lambda rows: all(
                (rows[d].get("rollout") or {}).get("state") == "refused" for d in devices), timeout=30)
            assert all("signature does not match" in rows[d]["rollout"]["why"] for d in devices)
        # a validly signed bundle whose model does not give the outputs the publisher recorded
        broken = json.loads(json.dumps(manifest))
        broken["health"]["outputs"] = [[[v + 5.0 * (i % 3) for i, v in enumerate(row[0])]]
                                       for row in broken["health"]["outputs"]]
        from edgekit.edge_apps.rollout import BundleServer

        server = BundleServer(v2, list(broken["files"]))
        try:
            publish_raw(broker, "factory", "line-1", {"id": rollout_id(broken), "manifest": broken,
                                                      "signature": sign(broken, key), "url": server.url,
                                                      "percent": 100})
            rows = wait_rows(broker, "factory", lambda rows: all(
                (rows[d].get("rollout") or {}).get("id") == rollout_id(broken) for d in devices), timeout=60)
        finally:
            server.close()
        for d in devices:
            assert rows[d]["rollout"]["state"] == "failed" and "health sample" in rows[d]["rollout"]["why"], d
            link = tmp_path / "devices" / d / "current"
            assert (os.readlink(link) if link.is_symlink() else None) == (rid if d in chosen else None), d
            assert not list((tmp_path / "devices" / d).glob(".staging-*"))
    finally:
        for agent in agents:
            agent.send_signal(signal.SIGINT)
        for agent in agents:
            try:
                agent.wait(30)
            except subprocess.TimeoutExpired:
                agent.kill()
                agent.wait()


def test_a_running_camera_app_takes_a_rollout_and_a_model_it_cannot_run_is_rolled_back(
        broker, exported, binary_models, tmp_path):
    """`fleet agent --probation` beside `edgekit run --model MODELS/current/model.onnx --fleet`: the run switches
    to a rolled-out model without stopping its camera; a model it cannot take (other labels) never reports
    frames, so the agent points `current` back and the run keeps the model it had."""
    from edgekit.core.spec import sha256_file
    from edgekit.edge_apps.rollout import keygen

    folder, _ = exported
    key, public = keygen(tmp_path / "fleet.key")
    v1 = bundle(tmp_path / "v1", folder / "model.onnx")
    v2 = bundle(tmp_path / "v2", folder / "model_int8.onnx")
    wrong = bundle(tmp_path / "wrong", binary_models["onnxruntime"])  # loads and is healthy, other labels
    models, url = tmp_path / "models", f"mqtt://pi-02@127.0.0.1:{broker}/cell"
    env = cli_env("pi-02")

    def publish(bundle_folder: Path) -> str:
        proc = subprocess.run([sys.executable, "-m", "edgekit", "fleet", "publish", str(bundle_folder), "--broker", url,
                               "--to", "cams", "--key", str(key), "--duration", "6"], capture_output=True, text=True,
                              timeout=120, env=env)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout.strip()

    agent = subprocess.Popen([sys.executable, "-m", "edgekit", "fleet", "agent", "--broker", url, "--group", "cams",
                              "--trust", str(public), "--dir", str(models), "--device-id", "cam-1", "--probation", "20",
                              "--interval", "0.5"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             env=env, preexec_fn=default_sigint)
    run = None
    try:
        wait_rows(broker, "cell", lambda rows: (rows.get("cam-1") or {}).get("agent_online"))
        first = subprocess.Popen([sys.executable, "-m", "edgekit", "fleet", "publish", str(v1), "--broker", url,
                                  "--to", "cams", "--key", str(key), "--duration", "8"], stdout=subprocess.PIPE,
                                 stderr=subprocess.DEVNULL, text=True, env=env)
        deadline = time.monotonic() + 30
        while not (models / "current" / "model.onnx").is_file():  # the first model arrives (on probation)
            assert time.monotonic() < deadline
            time.sleep(0.2)
        run = subprocess.Popen([sys.executable, "-m", "edgekit", "run", "--model", str(models / "current" / "model.onnx"),
                                "--source", str(MEGAMIND), "--loop", "--realtime", "--no-save-video", "--out",
                                str(tmp_path / "run"), "--fleet", url, "--device-id", "cam-1", "--fleet-interval", "0.5"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                               preexec_fn=default_sigint)
        first_id = first.communicate(timeout=60)[0].strip()
        rows = wait_rows(broker, "cell", lambda rows: (rows["cam-1"].get("rollout") or {}).get("state") == "active")
        assert rows["cam-1"]["rollout"]["id"] == first_id
        v2_id = publish(v2)
        v2_hash = sha256_file(v2 / "model.onnx")[:16]
        rows = wait_rows(broker, "cell", lambda rows: (rows["cam-1"].get("rollout") or {}).get("id") == v2_id and
                         (rows["cam-1"].get("telemetry") or {}).get("model", {}).get("sha256") == v2_hash)
        assert rows["cam-1"]["rollout"]["state"] == "active" and rows["cam-1"]["online"] is True
        wrong_id = publish(wrong)
        rows = wait_rows(broker, "cell", lambda rows: (rows["cam-1"].get("rollout") or {}).get("state") ==
                         "rolled-back", timeout=90)
        assert wrong_id in rows["cam-1"]["rollout"]["why"] and os.readlink(models / "current") == v2_id
        assert rows["cam-1"]["telemetry"]["model"]["sha256"] == v2_hash and rows["cam-1"]["online"] is True
        assert run.poll() is None  # the camera app never stopped
        run.send_signal(signal.SIGINT)
        out, err = run.communicate(timeout=60)
        summary = json.loads((tmp_path / "run" / "summary.json").read_text())
        switches = summary["model_switches"]
        assert [s["ok"] for s in switches] == [True, False] and "not the running one's" in switches[1]["why"]
    finally:
        for proc in (run, agent):
            if proc is not None and proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                try:
                    proc.wait(30)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


@pytest.mark.browser
def test_the_fleet_page_shows_devices_live_in_headless_chromium_and_only_with_the_token(broker):
    """`fleet status --serve`: the table of `fleet status`, refreshed every second in the browser: a device's
    FPS changes on the page as its telemetry does, and a browser without the viewer token gets a 401."""
    from edgekit.edge_apps.fleet import FleetTarget, TelemetryPublisher

    port = free_port()
    page = subprocess.Popen([sys.executable, "-m", "edgekit", "fleet", "status", "--broker",
                             f"mqtt://reader@127.0.0.1:{broker}/page", "--serve", f"127.0.0.1:{port}",
                             "--viewer-token", "fleet-viewer-1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=cli_env("reader"), preexec_fn=default_sigint)
    fps = {"value": 12.5}
    os.environ["EDGEKIT_FLEET_PASSWORD"] = USERS["pi-01"]
    try:
        publisher = TelemetryPublisher(FleetTarget.parse(f"mqtt://pi-01@127.0.0.1:{broker}/page"), "kiosk-7",
                                       lambda: {"fps": fps["value"], "model": {"name": "m.onnx", "sha256": "ab" * 8}},
                                       interval=0.2).start()
    finally:
        del os.environ["EDGEKIT_FLEET_PASSWORD"]
    try:
        assert "fleet page on http://127.0.0.1:" in page.stderr.readline()
        row = "(document.querySelector('tr[data-device=\"kiosk-7\"]') || {innerText: ''}).innerText"
        with Browser(f"http://127.0.0.1:{port}/login") as browser:
            browser.login("fleet-viewer-1")
            text = browser.wait_for(f"{row}.includes('12.5') && {row}")
            assert "online" in text and "m.onnx" in text and "abababababab" in text
            fps["value"] = 3.25
            assert "3.3" in browser.wait_for(f"{row}.includes('3.3') && {row}")  # live: no reload
        with Browser(f"http://127.0.0.1:{port}/") as stranger:
            assert "401" in stranger.wait_for("document.body && document.body.innerText")
            assert stranger.evaluate("fetch('/status.json').then(r => r.status)") == 401
        publisher.close()
        page.send_signal(signal.SIGINT)
        out, _ = page.communicate(timeout=30)
        assert page.returncode in (0, 130) and "kiosk-7" in out and "offline" in out
    finally:
        if page.poll() is None:
            page.kill()
            page.wait()


def test_mqtts_with_a_private_ca_and_a_clean_refusal_without_it(tmp_path):
    """A TLS broker whose certificate is signed by nobody the system trusts: with --fleet-ca the report goes
    through and reads back; without it, one line about the certificate and exit 2."""
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out", str(cert),
                    "-days", "1", "-subj", "/CN=127.0.0.1", "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True)
    key.chmod(0o644)  # mosquitto may read it as another user
    proc, port = start_mosquitto(tmp_path, f"certfile {cert}\nkeyfile {key}\n")
    try:
        sent = subprocess.run([sys.executable, "-m", "edgekit", "doctor", "--fleet", f"mqtts://pi-01@127.0.0.1:{port}/tls",
                               "--fleet-ca", str(cert), "--device-id", "secure-1"], capture_output=True, text=True,
                              timeout=120, env=cli_env("pi-01"))
        assert "published to mqtts://pi-01@127.0.0.1" in sent.stderr, sent.stderr
        read = subprocess.run([sys.executable, "-m", "edgekit", "fleet", "status", "--broker",
                               f"mqtts://reader@127.0.0.1:{port}/tls", "--fleet-ca", str(cert), "--json", "--wait", "0.5"],
                              capture_output=True, text=True, timeout=60, env=cli_env("reader"))
        assert read.returncode == 0, read.stderr
        assert [row["device"] for row in json.loads(read.stdout)] == ["secure-1"]
        refused = subprocess.run([sys.executable, "-m", "edgekit", "fleet", "status", "--broker",
                                  f"mqtts://reader@127.0.0.1:{port}/tls"], capture_output=True, text=True, timeout=60,
                                 env=cli_env("reader"))
        assert refused.returncode == 2 and "certificate verify failed" in refused.stderr, refused.stderr
        assert len(refused.stderr.strip().splitlines()) == 1
    finally:
        proc.terminate()
        proc.wait(10)


def test_a_device_that_dies_without_a_goodbye_is_marked_offline_by_its_last_will(broker, exported, tmp_path):
    folder, _ = exported
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "run", "--model", str(folder / "model.onnx"), "--source",
                             str(MEGAMIND), "--loop", "--realtime", "--no-save-video", "--out", str(tmp_path / "run"),
                             "--fleet", f"mqtt://pi-02@127.0.0.1:{broker}/plant-f", "--fleet-interval", "0.5",
                             "--device-id", "doomed"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env=cli_env("pi-02"))
    try:
        wait_rows(broker, "plant-f", lambda rows: (rows.get("doomed") or {}).get("online") is True)
        proc.kill()  # SIGKILL: no goodbye
        proc.wait()
        killed = time.monotonic()
        wait_rows(broker, "plant-f", lambda rows: rows["doomed"]["online"] is False, timeout=30)
        assert time.monotonic() - killed < 1.5 * 10 + 5  # the broker's keepalive limit, plus a poll
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
