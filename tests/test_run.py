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


def test_frames_of_another_size_are_fitted_into_the_video_not_dropped(tmp_path):
    """OpenCV's writer silently drops a frame whose size differs from the video's (a camera that changes
    resolution, a stream that reconnects): the sink fits it to the first frame's size and counts it."""
    import cv2
    import numpy as np

    from edgekit.edge_apps.pipeline import VideoSink, format_summary

    sink = VideoSink(tmp_path / "annotated.avi", 10)
    for i in range(12):
        shape = (64, 96, 3) if i % 3 else (120, 160, 3)
        sink.write(np.full(shape, 20 * i, np.uint8) if i != 5 else np.full((30, 40), 99, np.uint8))
    sink.close()
    video = cv2.VideoCapture(str(tmp_path / "annotated.avi"))
    assert int(video.get(cv2.CAP_PROP_FRAME_COUNT)) == 12
    assert video.read()[1].shape == (120, 160, 3)
    report = sink.report()
    assert report["frames"] == 12 and report["resized"] == 8 and report["size"] == [160, 120]
    summary = {"app": "x", "frames": 12, "seconds": 1.0, "pipeline_fps": 12.0, "model_only_fps": 1.0, "cpu_ms_per_frame": 2.0,
               "inferences": 12, "gated": 0, "stages": {}, "glass_to_glass": None, "peak_rss_mb": None,
               "source": {"name": "s", "read": 12, "dropped": 0, "corrupt": 0, "reconnects": 0, "error": None},
               "video": report}
    assert "annotated.avi: 12 frames (8 of another size fitted to 160x120)" in format_summary(summary)


def test_picamera2_source_reads_a_camera_module_through_its_library(exported, tmp_path):
    """--source picamera2 with a stand-in Picamera2 module (tests/fake_picamera2, the library's documented
    API): frames flow as from any live source, a missing camera number is one error line, and doctor names
    the camera stack."""
    import os
    import subprocess
    import sys

    from conftest import REPO

    out, _ = exported
    env = {**os.environ, "PYTHONPATH": str(REPO / "tests" / "fake_picamera2")}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True, env=env,
                              timeout=300)

    proc = cli("run", "--model", str(out / "model.onnx"), "--source", "picamera2", "--max-frames", "8",
               "--out", str(tmp_path / "cam"), "--no-save-video")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((tmp_path / "cam" / "summary.json").read_text())
    assert summary["frames"] == 8 and summary["source"]["live"] and summary["source"]["name"] == "picamera2"
    missing = cli("run", "--model", str(out / "model.onnx"), "--source", "picamera2:3", "--out", str(tmp_path / "x"))
    assert missing.returncode == 2 and "1 camera(s) found" in missing.stderr.strip().splitlines()[-1]
    doctor = cli("doctor")
    assert "--source picamera2" in doctor.stdout, doctor.stdout
    without = run_cli("run", "--model", str(out / "model.onnx"), "--source", "picamera2", "--out", str(tmp_path / "y"))
    assert without.returncode == 2 and "python3-picamera2" in without.stderr.strip().splitlines()[-1]


def _write_clip(path, fourcc: str, size=(160, 120), frames=12):
    import cv2

    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*fourcc), 10, size)
    assert writer.isOpened(), f"OpenCV cannot write {fourcc}"
    rng = np.random.default_rng(1)
    for i in range(frames):
        image = cv2.GaussianBlur(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8), (9, 9), 3)
        cv2.rectangle(image, (10 + 5 * i, 20), (60 + 5 * i, 80), (230, 200, 30), -1)
        writer.write(image)
    writer.release()
    return path


def test_mjpeg_video_is_decoded_at_the_reduced_size_the_model_needs(tmp_path):
    """libjpeg's scaled decoding of the raw JPEG frames: 160x120 -> 80x60 when 32x32 is all that is needed
    (40x30 would be too small), close to the full decode shrunk with INTER_AREA; other codecs decode as before."""
    import cv2

    from edgekit.edge_apps.sources import FrameSource

    mjpeg = _write_clip(tmp_path / "mjpeg.avi", "MJPG")
    full = [f.image for f in FrameSource(str(mjpeg))]
    source = FrameSource(str(mjpeg))
    assert source.reduce_decoding(32, 32) == 2
    reduced = [f.image for f in source]
    source.close()
    assert len(reduced) == len(full) == 12 and source.stats.corrupt == 0
    assert {image.shape for image in reduced} == {(60, 80, 3)}
    for small, big in zip(reduced, full):
        shrunk = cv2.resize(big, (80, 60), interpolation=cv2.INTER_AREA)
        assert np.abs(small.astype(int) - shrunk).mean() < 4
    source = FrameSource(str(mjpeg))
    assert source.reduce_decoding(100, 100) == 1  # 80x60 would be smaller than asked: full size
    source.close()
    other = FrameSource(str(_write_clip(tmp_path / "mpeg4.avi", "mp4v")))
    assert other.reduce_decoding(8, 8) == 1 and next(iter(other)).image.shape == (120, 160, 3)
    other.close()


def test_run_decodes_reduced_only_when_nothing_shows_the_frame(exported, clip, tmp_path):
    out, _ = exported
    runs = {}
    for name, extra in {"headless": ["--no-save-video"], "full": ["--no-save-video", "--full-decode"],
                        "video": []}.items():
        proc = run_cli("run", "--model", str(out / "model_int8.onnx"), "--source", str(clip),
                       "--out", str(tmp_path / name), *extra)
        assert proc.returncode == 0, proc.stderr
        runs[name] = json.loads((tmp_path / name / "summary.json").read_text())
        assert runs[name]["frames"] == 40 and runs[name]["cpu_ms_per_frame"] > 0
    # the 96x64 clip, a 32x32 model: 48x32 is enough; a video for people keeps the frame's full size
    assert runs["headless"]["source"]["decoded_at"] == "1/2"
    assert runs["full"]["source"]["decoded_at"] == runs["video"]["source"]["decoded_at"] == "full size"


def test_stream_without_viewers_encodes_one_frame_a_second_but_keeps_the_status_live(tmp_path):
    import time

    from edgekit.edge_apps.apps import Analysis, Timer
    from edgekit.edge_apps.pipeline import SinkThread, StreamSink
    from edgekit.edge_apps.sources import Frame
    from edgekit.edge_apps.stream import MjpegServer

    server = MjpegServer(f"127.0.0.1:{free_port()}", token="t")
    sink = StreamSink(server)
    timer = Timer()
    writer = SinkThread([sink], timer)
    image = np.full((48, 64, 3), 80, np.uint8)
    for i in range(10):
        writer.submit(Frame(i, image, time.monotonic(), i / 10), Analysis("a", 0.9), "", {"frames": i + 1})
    writer.close()  # drains the queue, then closes the server
    assert len(timer.times["render"]) == 1  # ten frames, nobody watching: one JPEG for /frame.jpg
    assert server.status()["frames"] == 10  # /status.json still follows every frame
    server.count(viewers=1)
    assert sink.wants_frame()
