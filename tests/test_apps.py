"""The camera apps through the real CLI: attend on a real video with each runtime, the driver monitor,
the MJPEG stream in a real headless Chromium, Ctrl-C, reconnects, corrupt and truncated videos, the
switchable savings; and the alert / PERCLOS logic on its own."""
import json
import os
import signal
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from browser import Browser
from conftest import default_sigint, free_port, run_cli
from edgekit.edge_apps.driver import AlertTimer, Perclos


def read_video(path):
    import cv2

    video = cv2.VideoCapture(str(path))
    frames = int(video.get(cv2.CAP_PROP_FRAME_COUNT))
    ok, first = video.read()
    return frames, first if ok else None


def events_of(folder):
    return [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("runtime", ["pytorch", "onnxruntime", "openvino"])
def test_attend_finds_faces_on_a_real_video_with_each_runtime(binary_models, faces_video, runtime, tmp_path):
    proc = run_cli("run", "--app", "attend", "--model", str(binary_models[runtime]), "--runtime", runtime,
                   "--source", str(faces_video), "--max-frames", "60", "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames"] == 60 and summary["runtime"]["runtime"] == runtime
    assert summary["faces"]["searched"] == 60 and summary["faces"]["found"] > 30  # most frames
    assert summary["inferences"] == summary["faces"]["found"]  # the classifier sees faces only
    for stage in ("roi", "preprocess", "infer", "smooth", "render"):
        assert stage in summary["stages"] and f"  {stage}" in proc.stdout
    frames, first = read_video(tmp_path / "annotated.avi")
    assert frames == 60 and first is not None
    events = events_of(tmp_path)
    assert events and {e["label"] for e in events} <= {"attentive", "not attentive"}


def test_attend_scores_zero_when_faces_are_missing(binary_models, clip, tmp_path):
    """A clip without faces: every window has no face in more than half its frames -> not attentive, 0."""
    proc = run_cli("run", "--app", "attend", "--model", str(binary_models["onnxruntime"]), "--source", str(clip),
                   "--out", str(tmp_path), "--no-save-video")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["faces"]["found"] == 0 and summary["inferences"] == 0
    assert events_of(tmp_path) == [{**events_of(tmp_path)[0], "label": "not attentive", "score": 0.0}]


@pytest.mark.slow
def test_driver_monitor_alerts_follow_the_threshold(exported, faces_video, tmp_path):
    out, _ = exported
    labels = json.loads((out / "model_int8.onnx.edgekit.json").read_text())["spec"]["labels"]
    proc = run_cli("run", "--app", "driver", "--model", str(out / "model_int8.onnx"), "--source", str(faces_video),
                   "--safe-label", labels[0], "--alert-after", "0.5", "--hold", "1", "--smooth", "none",
                   "--max-frames", "72", "--out", str(tmp_path), "--no-save-video")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["faces"]["found"] > 36 and "eyes" in summary["stages"]
    events = events_of(tmp_path)
    label_at = {}  # reported label per frame, from the label events
    for e in events:
        if e["type"] == "label":
            label_at[e["frame"]] = e["label"]
    for alert in (e for e in events if e["type"] == "alert" and e["alert"] == "distracted"):
        # the alert is raised only after 0.5 s (12 frames at 24 FPS) of a non-safe label
        changes = [f for f in label_at if f <= alert["frame"]]
        assert alert["for_s"] >= 0.5 and label_at[max(changes)] != labels[0]


def test_alert_timer_and_perclos():
    timer = AlertTimer("distracted", after=1.0)
    fired = [timer.update(c, t) for c, t in ((True, 0.0), (True, 0.5), (True, 1.0), (True, 1.5), (False, 2.0))]
    assert [len(f) for f in fired] == [0, 0, 1, 0, 1]
    assert fired[2][0]["type"] == "alert" and fired[4][0]["type"] == "alert_end"
    perclos = Perclos(seconds=2.0)
    values = [perclos.update(closed, t) for closed, t in ((False, 0.0), (True, 1.0), (None, 1.5), (True, 2.0),
                                                          (True, 3.5))]
    assert values == [0.0, 0.5, 0.5, 2 / 3, 1.0]  # no-face frames do not count; old samples leave the window


@pytest.mark.browser
def test_mjpeg_stream_plays_in_headless_chromium_and_ctrl_c_keeps_the_files(binary_models, faces_video, tmp_path):
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "run", "--app", "attend", "--model",
                             str(binary_models["onnxruntime"]), "--source", str(faces_video), "--realtime",
                             "--loop", "--serve", f"127.0.0.1:{port}", "--viewer-token", "watch-me", "--out",
                             str(tmp_path)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    try:
        line = ""
        while proc.poll() is None and "streaming on" not in line:
            line = proc.stderr.readline()
        assert f"streaming on http://127.0.0.1:{port}/" in line, line
        with Browser(f"http://127.0.0.1:{port}/login") as browser:
            browser.login("watch-me")
            assert browser.image_width("live") > 0  # the page loaded and the first frame decoded
            seen = browser.count_frames("live", polls=15)
        assert seen["distinct"] >= 3, seen  # new frames kept arriving in the browser
        assert '"frames"' in seen["text"]  # the status panel is filled from /status.json
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0 and "interrupted" in stderr, stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    frames, first = read_video(tmp_path / "annotated.avi")
    assert 0 < summary["frames"] and frames == summary["frames"] and first is not None  # finalised, all there
    assert events_of(tmp_path)[0]["frame"] == 0


class DroppingServer(BaseHTTPRequestHandler):
    """Serves the clip; the first request is cut off halfway (the stream drops), later ones are whole."""

    payload = b""
    requests = 0

    def do_GET(self):
        type(self).requests += 1
        self.send_response(200)
        self.send_header("Content-Type", "video/x-msvideo")
        self.send_header("Content-Length", str(len(self.payload)))
        self.end_headers()
        body = self.payload if self.requests > 1 else self.payload[:len(self.payload) // 2]
        self.wfile.write(body)
        self.close_connection = True

    def log_message(self, *args):
        pass


@pytest.mark.network
def test_url_source_reconnects_after_a_drop(exported, clip, tmp_path):
    out, _ = exported
    handler = type("Handler", (DroppingServer,), {"payload": clip.read_bytes(), "requests": 0})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        proc = run_cli("run", "--model", str(out / "model.onnx"), "--source",
                       f"http://127.0.0.1:{server.server_address[1]}/clip.avi", "--reconnect", "1",
                       "--out", str(tmp_path), "--no-save-video")
    finally:
        server.shutdown()
    assert proc.returncode == 0, proc.stderr
    source = json.loads((tmp_path / "summary.json").read_text())["source"]
    assert source["reconnects"] == 1 and handler.requests == 2
    assert 40 < source["read"] < 80  # part of the first response, then the whole clip
    assert "stopped delivering frames" in source["error"]


def test_corrupt_frame_is_skipped_and_truncated_file_is_reported(exported, clip, tmp_path):
    out, _ = exported
    data = bytearray(clip.read_bytes())
    jpeg_starts = [i for i in range(len(data) - 1) if data[i] == 0xFF and data[i + 1] == 0xD8]
    assert len(jpeg_starts) == 40
    bad = bytearray(data)
    bad[jpeg_starts[20]:jpeg_starts[20] + 400] = bytes(400)  # frame 20 no longer decodes
    (tmp_path / "bad.avi").write_bytes(bad)
    (tmp_path / "cut.avi").write_bytes(data[:jpeg_starts[25]])  # the file ends inside frame 25
    results = {}
    for name in ("bad", "cut"):
        proc = run_cli("run", "--model", str(out / "model.onnx"), "--source", str(tmp_path / f"{name}.avi"),
                       "--out", str(tmp_path / name))
        assert proc.returncode == 0, proc.stderr
        results[name] = json.loads((tmp_path / name / "summary.json").read_text())
    assert results["bad"]["frames"] == 39 and results["bad"]["source"]["corrupt"] == 1
    assert results["bad"]["source"]["error"] is None
    assert results["cut"]["frames"] == 25 and "ended after 25 of 40 frames" in results["cut"]["source"]["error"]
    assert read_video(tmp_path / "cut" / "annotated.avi")[0] == 25


def test_motion_gate_and_scale(exported, tmp_path):
    """20 identical frames then 20 changing ones: the gate skips the model on the still part; --scale 0.5
    halves what is processed and written."""
    import cv2

    path = tmp_path / "still.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 20, (128, 96))
    for i in range(40):
        image = np.full((96, 128, 3), 40, np.uint8)
        image[20:70, max(0, i - 20) * 4:max(0, i - 20) * 4 + 40] = 230
        writer.write(image)
    writer.release()
    out, _ = exported
    proc = run_cli("run", "--model", str(out / "model.onnx"), "--source", str(path), "--motion-gate", "2",
                   "--scale", "0.5", "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["frames"] == 40 and summary["gated"] >= 19 and summary["inferences"] == 40 - summary["gated"]
    assert summary["inferences"] >= 20  # every moving frame was analysed
    assert read_video(tmp_path / "o" / "annotated.avi")[1].shape == (48, 64, 3)


@pytest.mark.parametrize("args, fragment", [
    (("--app", "attend"), "needs a binary (2-class)"),
    (("--app", "driver"), "which class is safe driving"),
    (("--faces", "eyes.txt"), "--faces must be haar, none or a cascade .xml"),
    (("--serve", "localhost"), "--serve needs HOST:PORT"),
    (("--scale", "0"), "--scale must be in (0, 4]"),
])
def test_bad_app_input_is_one_line(exported, clip, tmp_path, args, fragment):
    out, _ = exported
    proc = run_cli("run", "--model", str(out / "model.onnx"), "--source", str(clip), "--out", str(tmp_path), *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and fragment in last and "Traceback" not in proc.stderr


def test_show_without_a_display_says_how_to_watch_instead(exported, clip, tmp_path):
    out, _ = exported
    env = {k: v for k, v in os.environ.items() if k not in ("DISPLAY", "WAYLAND_DISPLAY")}
    proc = subprocess.run([sys.executable, "-m", "edgekit", "run", "--model", str(out / "model.onnx"), "--source",
                           str(clip), "--show", "--out", str(tmp_path)], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 2 and "--serve" in proc.stderr.strip().splitlines()[-1]


@pytest.mark.network
def test_stream_server_serves_newest_frame_and_status(tmp_path):
    import urllib.request

    from edgekit.edge_apps.stream import MjpegServer

    server = MjpegServer("127.0.0.1:0", token="tok")

    def get(path: str, token: str | None = "tok"):
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return urllib.request.urlopen(urllib.request.Request(server.url + path, headers=headers), timeout=5)

    try:
        with pytest.raises(urllib.error.HTTPError) as early:
            get("frame.jpg")
        assert early.value.code == 503  # before the first frame
        server.publish(b"\xff\xd8first", {"label": "a"})
        server.publish(b"\xff\xd8second", {"label": "b"})
        for path in ("", "frame.jpg", "status.json", "stream.mjpg"):
            for token in (None, "wrong"):
                with pytest.raises(urllib.error.HTTPError) as refused:
                    get(path, token)
                assert refused.value.code == 401 and b"second" not in refused.value.read()
        assert get("frame.jpg").read() == b"\xff\xd8second"
        assert json.loads(get("status.json").read())["label"] == "b"
        with get("stream.mjpg") as stream:
            head = [stream.readline() for _ in range(4)]
            assert head[:2] == [b"--edgekitframe\r\n", b"Content-Type: image/jpeg\r\n"] and head[3] == b"\r\n"
            assert stream.read(int(head[2].split(b":")[1])) == b"\xff\xd8second"
    finally:
        server.close()


def test_daisee_like_clips_become_face_crops_grouped_by_person(tmp_path):
    """DataSet/Train/<person>/<clip>/<clip>.avi + AllLabels.csv -> crops per label and a CSV that
    `edgekit train --group-column person` reads."""
    import cv2

    from conftest import draw_face

    root = tmp_path / "DataSet" / "Train"
    levels = {}
    for p, person in enumerate(("110001", "110002", "110003")):
        for c in range(2):
            clip = f"{person}{c:04d}"
            folder = root / person / clip
            folder.mkdir(parents=True)
            writer = cv2.VideoWriter(str(folder / f"{clip}.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 10, (320, 240))
            for i in range(20):  # 2 s at 10 FPS
                writer.write(draw_face(np.full((240, 320, 3), 90, np.uint8), 150 + i, 120, 70))
            writer.release()
            levels[clip] = (p + c) % 4
    (root / "110001" / "1100019999").mkdir()
    (root / "110001" / "1100019999" / "1100019999.avi").write_bytes(b"not a video")  # unlabelled, skipped
    labels = tmp_path / "AllLabels.csv"
    labels.write_text("ClipID,Boredom,Engagement,Confusion,Frustration \n"
                      + "".join(f"{clip}.avi,0,{level},0,0\n" for clip, level in levels.items()))
    proc = run_cli("dataset", "faces", str(tmp_path / "DataSet"), "--labels", str(labels), "--out",
                   str(tmp_path / "crops"), "--fps", "2")
    assert proc.returncode == 0, proc.stderr
    assert "1 clips without a label" in proc.stderr
    import csv

    rows = list(csv.DictReader(open(tmp_path / "crops" / "faces.csv")))
    assert {r["person"] for r in rows} == {"110001", "110002", "110003"}
    assert len(rows) > 0.8 * 6 * 4  # 6 clips x 4 sampled frames (2 per second), faces in most
    for r in rows:
        assert r["label"] == ("attentive" if levels[r["clip"]] >= 2 else "not_attentive")
        assert cv2.imread(str(tmp_path / "crops" / r["path"])).shape == (112, 112, 3)
    bad = run_cli("dataset", "faces", str(tmp_path / "DataSet"), "--labels", str(labels), "--out",
                  str(tmp_path / "c2"), "--column", "Attention")
    assert bad.returncode == 2 and "no column 'Attention'" in bad.stderr.strip().splitlines()[-1]


def test_an_interrupted_face_dataset_leaves_nothing_behind(tmp_path):
    """Ctrl-C while `dataset faces` is cropping: exit 130, no crops and no faces.csv in --out (they are staged
    in a hidden folder that is removed), so a later `train` cannot pick up half a data set."""
    import signal
    import subprocess
    import sys
    import time

    import cv2

    from conftest import default_sigint, draw_face

    folder = tmp_path / "DataSet" / "Train" / "110001" / "1100010001"
    folder.mkdir(parents=True)
    writer = cv2.VideoWriter(str(folder / "1100010001.avi"), cv2.VideoWriter_fourcc(*"MJPG"), 30, (320, 240))
    for i in range(3000):  # long enough to be interrupted mid-way
        writer.write(draw_face(np.full((240, 320, 3), 90, np.uint8), 120 + i % 80, 120, 70))
    writer.release()
    labels = tmp_path / "AllLabels.csv"
    labels.write_text("ClipID,Engagement\n1100010001.avi,3\n")
    out = tmp_path / "crops"
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", "dataset", "faces", str(tmp_path / "DataSet"),
                             "--labels", str(labels), "--out", str(out), "--fps", "30"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=default_sigint)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and not list(out.glob(".edgekit-dataset-*/attentive/*.jpg")):
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.05)
    assert list(out.glob(".edgekit-dataset-*/attentive/*.jpg")), "no crop was staged within 120 s"
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130 and "Traceback" not in err, err
    assert sorted(p.name for p in out.iterdir()) == [], list(out.rglob("*"))
