"""`edgekit run` on real files: a generated video clip and an image folder, through the real CLI."""
import json
import subprocess
import sys

import numpy as np
import pytest

from conftest import free_port, run_cli, run_cli_without
from edgekit.edge_apps.smoothing import Smoother, probabilities


def test_run_writes_events_video_and_summary(exported, clip, tmp_path):
    import cv2

    out, _ = exported
    proc = run_cli("run", "--model", str(out / "model_int8.onnx"), "--source", str(clip), "--out", str(tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "pipeline" in proc.stdout and "glass-glass" in proc.stdout
    labels = json.loads((out / "model_int8.onnx.edgekit.json").read_text())["spec"]["labels"]
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert events and events[0]["frame"] == 0 and all(e["label"] in labels for e in events)
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames"] == summary["inferences"] == summary["source"]["read"] == 40
    assert set(summary["stages"]) == {"wait", "preprocess", "infer", "smooth", "render"}
    video = cv2.VideoCapture(str(tmp_path / "annotated.avi"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 40 and video.read()[1].shape == (64, 96, 3)


def test_run_every_kth_frame_and_without_torch(exported, clip, tmp_path):
    out, _ = exported
    proc = run_cli_without("torch", "run", "--model", str(out / "model.onnx"), "--source", str(clip),
                           "--out", str(tmp_path), "--every", "3", "--no-save-video")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames"] == 40 and summary["inferences"] == 14  # frames 0, 3, ..., 39
    assert not (tmp_path / "annotated.avi").exists()


def test_image_folder_skips_and_counts_corrupt_files(exported, image_folder, tmp_path):
    import shutil

    out, _ = exported
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, path in enumerate(sorted((image_folder / "cat").iterdir())[:5]):
        shutil.copy(path, frames / f"{i:02d}.png")
    (frames / "03.png").write_bytes(b"not a png")
    proc = run_cli("run", "--model", str(out / "model.xml"), "--source", str(frames), "--out", str(tmp_path / "o"))
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["frames"] == 4 and summary["source"]["corrupt"] == 1


@pytest.mark.parametrize("args, fragment", [
    (("--source", "missing.avi"), "source not found"),
    (("--smooth", "median:3"), "--smooth must be"),
    (("--every", "0"), "--every must be in [1, 10000], got 0"),
])
def test_bad_run_input_is_one_line(exported, clip, tmp_path, args, fragment):
    out, _ = exported
    base = {"--source": str(clip)}
    base.update(dict(zip(args[::2], args[1::2])))
    flat = [x for kv in base.items() for x in kv]
    proc = run_cli("run", "--model", str(out / "model.onnx"), "--out", str(tmp_path), *flat, cwd=tmp_path)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and fragment in last and "Traceback" not in proc.stderr


def test_hysteresis_holds_the_label_until_a_new_one_persists():
    smoother = Smoother("none", 0, hold=3)
    a, b = np.array([0.9, 0.1]), np.array([0.1, 0.9])
    labels = [smoother.update(p)[0] for p in (a, b, b, a, b, b, b, b)]
    assert labels == [0, 0, 0, 0, 0, 0, 1, 1]  # one stray frame never flips it; three in a row do


def test_window_and_ema_smoothing():
    window = Smoother("window", 2, hold=1)
    window.update(np.array([1.0, 0.0]))
    assert np.allclose(window.update(np.array([0.0, 1.0]))[1], [0.5, 0.5])
    ema = Smoother("ema", 0.25, hold=1)
    ema.update(np.array([1.0, 0.0]))
    assert np.allclose(ema.update(np.array([0.0, 1.0]))[1], [0.75, 0.25])
    assert np.allclose(probabilities(np.array([0.0]), binary=True), [0.5, 0.5])
    assert np.isclose(probabilities(np.array([1.0, 2.0, 3.0]), binary=False).sum(), 1.0)


@pytest.mark.network
def test_url_source_is_read_live_and_every_frame_is_accounted_for(exported, clip, tmp_path):
    """A real HTTP server streams the clip; the capture thread keeps the newest frame, so each frame read
    is either processed or counted as dropped."""
    import socket
    import time

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1",
                               "--directory", str(clip.parent)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        for _ in range(50):
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.1)
        out, _ = exported
        proc = run_cli("run", "--model", str(out / "model.onnx"), "--source", f"http://127.0.0.1:{port}/{clip.name}",
                       "--out", str(tmp_path), "--no-save-video", "--reconnect", "0")
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    source = summary["source"]
    assert source["live"] and source["read"] == 40
    assert summary["frames"] + source["dropped"] == source["read"]
    assert "stopped delivering frames" in source["error"]


def test_loop_replays_a_file_until_max_frames_and_close_waits_for_the_reader(exported, clip, tmp_path):
    from edgekit.edge_apps.sources import FrameSource

    out, _ = exported
    proc = run_cli("run", "--model", str(out / "model.onnx"), "--source", str(clip), "--loop", "--max-frames",
                   "100", "--out", str(tmp_path), "--no-save-video")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["frames"] == 100 and summary["source"]["error"] is None  # 2.5 passes over the 40-frame clip
    source = FrameSource(str(clip), loop=True)
    frames = iter(source)
    indices = [next(frames).index for _ in range(90)]
    assert indices == list(range(90))  # one running index across the passes
    source.close()  # while the reader may be inside a read: stop, join, then release
    assert not source._thread.is_alive() and not source.capture.isOpened()
