"""Clip models (issue 19): models and the I3D inflation, the spec's clip fields, clip data, and a clip model through
training, distillation, QAT, export, verify, bench and `run --app clip`."""
from pathlib import Path

import numpy as np
import pytest
import torch

from edgekit.core.errors import BadInputError
from edgekit.core.spec import ModelSpec, preprocess, preprocess_clip
from edgekit.models.registry import build_model, get_arch
from edgekit.models.video import TEMPORAL_KERNEL, i3d_mobilenet_v2


def clip_spec(**changes):
    base = dict(arch="mobilenet3d_x0_5", labels=("left", "right", "up"), input_size=(32, 32), task="clip",
                layout="NCTHW", clip_frames=4, frame_stride=2)
    return ModelSpec(**{**base, **changes})


@pytest.mark.parametrize("name", ["mobilenet3d", "mobilenet3d_x0_5", "i3d_mobilenet_v2"])
def test_clip_models_take_clips_and_give_one_row_of_logits(name):
    assert get_arch(name).task == "clip"
    model = build_model(name, 5).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, 8, 32, 32))
    assert out.shape == (2, 5)
    assert torch.isfinite(out).all()


def test_student_is_smaller_at_half_width():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    assert count(build_model("mobilenet3d_x0_5", 8)) < 0.45 * count(build_model("mobilenet3d", 8))


def test_inflated_teacher_reproduces_the_2d_network_on_a_still_clip():
    """I3D's property: a clip of one repeated image gives the 2D network's activations, wherever the clip's ends
    (zero padding in time) are out of reach. MobileNetV2 has 18 convolutions with a 3-frame kernel, so the
    middle frame of a 37-frame clip sees no end."""
    import torchvision

    torch.manual_seed(0)
    flat = torchvision.models.mobilenet_v2(num_classes=7)
    for module in flat.modules():  # non-trivial BatchNorm statistics, as a trained network has
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    flat.eval()
    inflated = i3d_mobilenet_v2(num_classes=7)
    inflated.load_2d_state_dict(flat.state_dict())
    inflated.eval()
    conv = inflated.features[1].conv[0][0]
    assert conv.kernel_size == (TEMPORAL_KERNEL, 3, 3) and conv.stride[0] == 1
    image = torch.randn(1, 3, 32, 32)
    frames = 2 * 18 + 1
    with torch.no_grad():
        want = flat.features(image)
        got = inflated.features(image.unsqueeze(2).repeat(1, 1, frames, 1, 1))
    assert got.shape[2] == frames
    torch.testing.assert_close(got[:, :, frames // 2], want, rtol=1e-4, atol=1e-4)
    # the ends do see the zero padding: the same clip's first frame differs
    assert (got[:, :, 0] - want).abs().max() > 1e-3


def test_clip_spec_fields_round_trip_and_shape():
    spec = clip_spec()
    assert spec.input_shape(2) == (2, 3, 4, 32, 32)
    assert ModelSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize("changes, message", [
    (dict(clip_frames=1), "2-256 clip_frames"),
    (dict(frame_stride=0), "frame_stride"),
    (dict(layout="NCHW"), "NCTHW"),
    (dict(task="image", layout="NCHW"), "clip_frames and frame_stride are for task 'clip'"),
])
def test_bad_clip_specs_are_refused(changes, message):
    with pytest.raises(BadInputError, match=message):
        clip_spec(**changes)


def test_preprocess_clip_treats_every_frame_like_an_image():
    spec = clip_spec()
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(4)]
    clip = preprocess_clip(frames, spec)
    assert clip.shape == (3, 4, 32, 32) and clip.dtype == np.float32
    image_spec = ModelSpec(arch="x", labels=spec.labels, input_size=(32, 32))
    np.testing.assert_array_equal(clip[:, 2], preprocess(frames[2], image_spec))
    with pytest.raises(BadInputError, match="has 4 frames, got 3"):
        preprocess_clip(frames[:3], spec)


# --- clip data: the motion benchmark's builder and both clip layouts ----------------------------------------
from edgekit.core.clips import ClipTable, load_clips, load_segments_csv  # noqa: E402
from edgekit.edge_apps.motion import MOTIONS, MotionClipsConfig, build_motion_clips  # noqa: E402
from tests.conftest import run_cli  # noqa: E402


def test_motion_builder_writes_both_layouts(motion_clips):
    assert sorted(d.name for d in motion_clips.iterdir() if d.is_dir()) == sorted(MOTIONS)
    assert all(len(list((motion_clips / m).glob("*.avi"))) == 4 for m in MOTIONS)
    table = load_segments_csv(motion_clips / "segments.csv")
    assert len(table) == 32 and table.groups is not None
    assert len(set(table.groups)) == 16  # two videos per source image: its subject
    frames = table.segment(0)
    assert frames.shape == (8, 32, 32, 3) and frames.dtype == np.uint8
    with pytest.raises(BadInputError, match="not an empty folder"):
        build_motion_clips(MotionClipsConfig(out=str(motion_clips), per_class=1))


def test_motion_moves_the_object_the_way_its_label_says(motion_clips):
    """The label is the motion: the bright object's centre of mass goes right in 'right' videos, etc."""
    table = load_segments_csv(motion_clips / "segments.csv")
    for motion, axis, sign in (("right", 1, 1), ("left", 1, -1), ("down", 0, 1), ("up", 0, -1)):
        for index in np.flatnonzero(table.labels == table.class_names.index(motion)):
            frames = table.segment(index)[..., 0].astype(np.float64)
            ends = []
            for frame in (frames[0], frames[-1]):
                weight = np.clip(frame - 60, 0, None)  # the object, not the noise
                ends.append((weight.sum(axis=1 - axis) * np.arange(32)).sum() / weight.sum())
            assert sign * (ends[1] - ends[0]) > 2, (motion, ends)


def test_segments_split_by_subject_and_the_same_recipe_gives_the_same_split(motion_clips):
    a = load_clips(motion_clips / "segments.csv", val_fraction=0.2, test_fraction=0.25, seed=3)
    b = load_clips(motion_clips / "segments.csv", val_fraction=0.2, test_fraction=0.25, seed=3)
    assert (a.split == b.split).all() and a.fingerprint == b.fingerprint
    for subject in set(a.groups):
        assert len(set(a.split[a.groups == subject])) == 1
    folder = load_clips(motion_clips)  # the class-folder layout: one segment per video, no subjects
    assert len(folder) == 32 and folder.groups is None and set(folder.class_names) == set(MOTIONS)


def test_clips_come_from_the_middle_or_a_random_place_and_short_segments_repeat(motion_clips):
    table = load_segments_csv(motion_clips / "segments.csv")
    segment = table.segment(0)
    middle = table.clip(0, 3, 2)  # span 5 of 8 frames: room 3, middle start 1
    assert all((f == segment[i]).all() for f, i in zip(middle, (1, 3, 5)))
    longer = table.clip(0, 6, 2)  # span 11 > 8: the last frame repeats
    assert (longer[-1] == segment[-1]).all() and (longer[-2] == segment[-1]).all()
    starts = {int(np.flatnonzero([(f == table.clip(0, 2, 1, rng=np.random.default_rng(s))[0]).all()
                                  for f in segment])[0]) for s in range(20)}
    assert len(starts) > 2


@pytest.mark.parametrize("body, message", [
    ("video,start,label\nx.avi,0,a\n", "missing column"),
    ("video,start,end,label\nleft/000000.avi,5,5,a\nleft/000000.avi,0,4,b\n", "must have 1 to"),
    ("video,start,end,label\nleft/000000.avi,x,4,a\nleft/000000.avi,0,4,b\n", "frame numbers"),
    ("video,start,end,label\n../../etc/passwd,0,4,a\nleft/000000.avi,0,4,b\n", "outside"),
    ("video,start,end,label\nnone.avi,0,4,a\nmissing.avi,0,4,b\n", "no readable videos"),
])
def test_bad_segment_files_are_one_clean_error(motion_clips, body, message):
    path = motion_clips / "bad.csv"
    path.write_text(body)
    try:
        with pytest.raises(BadInputError, match=message):
            load_segments_csv(path)
    finally:
        path.unlink()


def test_clip_augmentation_is_the_same_on_every_frame(motion_clips):
    from edgekit.training.torchdata import ClipDataset

    table = load_segments_csv(motion_clips / "segments.csv")
    still = ClipTable(labels=table.labels[:1], class_names=table.class_names, color="BGR", paths=table.paths[:1],
                      starts=np.zeros(1, np.int64), ends=np.ones(1, np.int64))  # one frame, repeated
    spec = clip_spec(labels=table.class_names, frame_stride=1)
    x, _ = ClipDataset(still, np.array([0]), spec, train=True, hflip=True, seed=1)[0]
    assert x.shape == (3, 4, 32, 32)
    for t in range(1, 4):
        torch.testing.assert_close(x[:, t], x[:, 0])


@pytest.mark.slow
def test_train_a_clip_model_from_the_cli(motion_clips, tmp_path):
    from edgekit.models.checkpoint import load_checkpoint

    out = tmp_path / "run"
    proc = run_cli("train", "--data", str(motion_clips / "segments.csv"), "--model", "mobilenet3d_x0_5",
                   "--imgsz", "32", "--clip-frames", "4", "--frame-stride", "2", "--epochs", "1", "--batch", "8",
                   "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    spec = load_checkpoint(out / "model.pt").spec
    assert (spec.task, spec.layout, spec.clip_frames, spec.frame_stride) == ("clip", "NCTHW", 4, 2)
    assert spec.input_shape() == (1, 3, 4, 32, 32)
    wrong = run_cli("train", "--data", str(motion_clips / "segments.csv"), "--model", "small_cnn", "--epochs", "1",
                    "--out", str(tmp_path / "wrong"))
    assert wrong.returncode == 2 and "an image model" in wrong.stderr and "Traceback" not in wrong.stderr


# --- a clip model through quantize, export, verify, bench and `run --app clip` -------------------------------
VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")  # Debian opencv-doc: a real street camera


def test_clip_models_export_and_verify_on_every_runtime(clip_exported):
    out, fp32, quantized, int8 = clip_exported
    assert fp32.verify_ok and int8.verify_ok, (fp32.failed, int8.failed)
    assert "held-out test clips" in fp32.verify_table  # messages name what a sample is
    rows = {row.name: row for row in fp32.verify_rows + int8.verify_rows}
    for name in ("model.onnx", "model.xml"):
        assert rows[name].max_abs < 1e-4  # FP32 graphs reproduce PyTorch on real clips
    for name in ("model_int8.onnx", "model_int8.xml"):
        assert rows[name].precision == "int8" and rows[name].agreement >= 0.9
    from edgekit.core.artifacts import read_sidecar

    spec = read_sidecar(out / "int8" / "model_int8.onnx")[0]
    assert (spec.task, spec.clip_frames, spec.precision) == ("clip", 4, "int8")
    assert (out / "int8" / "model_int8.onnx").stat().st_size < 0.4 * (out / "fp32" / "model.onnx").stat().st_size


def test_onnx_clip_model_runs_without_torch(clip_exported, motion_clips):
    """The Pi path: onnxruntime alone reads the clip spec, preprocesses a clip and classifies it."""
    import subprocess
    import sys

    out = clip_exported[0]
    code = f"""
import sys
sys.modules['torch'] = None  # as on a device without torch: importing it fails
import numpy as np
from edgekit.core.clips import load_segments_csv
from edgekit.core.spec import preprocess_clip
from edgekit.runtimes import RuntimeOptions, load_runtime
rt = load_runtime({str(out / 'int8' / 'model_int8.onnx')!r}, 'onnxruntime', RuntimeOptions(threads=1))
table = load_segments_csv(__import__('pathlib').Path({str(motion_clips / 'segments.csv')!r}))
x = preprocess_clip(table.clip(0, rt.spec.clip_frames, rt.spec.frame_stride), rt.spec)[None]
print(rt.infer(x).shape)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "(1, 8)" in proc.stdout


def test_bench_reports_clip_latency_per_frame(clip_exported, motion_clips, tmp_path):
    import json

    out = clip_exported[0]
    proc = run_cli("bench", "run", str(out / "fp32" / "model.onnx"), str(out / "int8" / "model_int8.onnx"),
                   "--min-runs", "5", "--min-seconds", "0.2", "--warmup", "1", "--json", str(tmp_path / "b.json"))
    assert proc.returncode == 0, proc.stderr[-1500:]
    assert "p50 per frame" in proc.stdout
    for row in json.loads((tmp_path / "b.json").read_text())["rows"]:
        assert row["clip_frames"] == 4
        assert row["p50_ms_per_frame"] == pytest.approx(row["p50_ms"] / 4)


@pytest.mark.skipif(not VTEST.is_file(), reason="needs Debian's opencv-doc (tools/system-packages.sh installs it)")
@pytest.mark.parametrize("model, every", [("int8/model_int8.onnx", 1), ("int8/model_int8.onnx", 3),
                                          ("fp32/model.xml", 1), ("model_int8.pt", 2)])
def test_run_app_clip_on_a_real_video(clip_exported, tmp_path, model, every):
    """On every runtime: a decision once the buffer holds 4 frames (every 2nd frame taken), then one every
    `every` frames taken; the summary times the clip buffer."""
    import json

    out = clip_exported[0]
    frames = 40
    proc = run_cli("run", "--model", str(out / model), "--app", "clip", "--source", str(VTEST),
                   "--max-frames", str(frames), "--clip-every", str(every), "--no-save-video", "--out",
                   str(tmp_path / "run"))
    assert proc.returncode == 0, proc.stderr[-1500:]
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    taken = frames // 2
    assert summary["inferences"] == 1 + (taken - 4) // every
    assert "buffer" in summary["stages"] and "infer" in summary["stages"]
    assert "clip decisions" in proc.stdout
    events = [json.loads(line) for line in (tmp_path / "run" / "events.jsonl").read_text().splitlines()]
    assert events[0]["label"] == "(filling clip)" and events[1]["frame"] == 6  # 4th frame taken: index 6


@pytest.mark.parametrize("model, args, fragment", [
    ("clip", ["--app", "classify"], "is a clip model"),
    ("clip", ["--app", "clip", "--every", "2"], "needs every frame"),
    ("clip", ["--app", "clip", "--faces", "haar"], "leave out --faces"),
    ("image", ["--app", "clip"], "needs a clip model"),
])
def test_clip_app_misuse_is_one_line(clip_exported, exported, tmp_path, model, args, fragment):
    path = clip_exported[0] / "fp32" / "model.onnx" if model == "clip" else exported[0] / "model.onnx"
    proc = run_cli("run", "--model", str(path), "--source", str(VTEST), "--max-frames", "5", "--no-save-video",
                   "--out", str(tmp_path / "run"), *args)
    assert proc.returncode == 2 and fragment in proc.stderr and "Traceback" not in proc.stderr, proc.stderr[-800:]


@pytest.mark.slow
def test_distillation_and_qat_for_clip_models(motion_clips, clip_model, tmp_path):
    """An inflated teacher teaches a 3D student (the same frames, normalised for each), and quantization-aware
    training gives an INT8 clip checkpoint that exports to QDQ ONNX and verifies."""
    from edgekit.export.core import ExportConfig, export
    from edgekit.training.quantize import QuantizeConfig, quantize_checkpoint
    from edgekit.training.trainer import TrainConfig, train

    data = str(motion_clips / "segments.csv")
    common = dict(data=data, input_size=32, clip_frames=4, frame_stride=2, epochs=1, batch_size=8, threads=2)
    teacher = train(TrainConfig(model="i3d_mobilenet_v2", weights="none", out=str(tmp_path / "teacher"), **common))
    student = train(TrainConfig(model="mobilenet3d_x0_5", weights="none", teacher=str(teacher["checkpoint"]),
                                kd_temperature=3, out=str(tmp_path / "student"), **common))
    assert student["report"]["distillation"]["teacher_arch"] == "i3d_mobilenet_v2"
    qat = quantize_checkpoint(QuantizeConfig(checkpoint=str(student["checkpoint"]), data=data, mode="qat",
                                             qat_epochs=1, calib_batches=1, batch_size=8,
                                             out=str(tmp_path / "qat.pt"), threads=2))
    assert qat["mode"] == "qat" and qat["int8"]["accuracy"] is not None
    from edgekit.models.checkpoint import load_checkpoint

    assert load_checkpoint(tmp_path / "qat.pt").spec.quantization["training"]["clip_grad"] == 1.0  # clip default
    result = export(ExportConfig(checkpoint=str(tmp_path / "qat.pt"), formats=("onnx",), out=str(tmp_path / "x"),
                                 data=data))
    assert result.verify_ok, result.failed
    # a teacher that sees other frames than the student is refused before training
    with pytest.raises(BadInputError, match="must see what the student sees"):
        train(TrainConfig(model="mobilenet3d_x0_5", weights="none", teacher=str(teacher["checkpoint"]),
                          out=str(tmp_path / "bad"), **{**common, "clip_frames": 2}))


def test_clip_models_calibrate_on_clips_only(clip_model, motion_clips, image_folder, tmp_path):
    """--calib takes a folder of labelled videos for a clip model; images are refused in one line."""
    good = run_cli("quantize", str(clip_model), "--calib", str(motion_clips), "--calib-batches", "1", "--batch", "8",
                   "--out", str(tmp_path / "q.pt"))
    assert good.returncode == 0, good.stderr[-1500:]
    assert (tmp_path / "q.pt").is_file()
    bad = run_cli("quantize", str(clip_model), "--calib", str(image_folder), "--out", str(tmp_path / "bad.pt"))
    assert bad.returncode == 2 and "calibrates on clips" in bad.stderr and "Traceback" not in bad.stderr, bad.stderr
