"""Clip models and clip specs (issue 19): shapes, the I3D inflation, and the spec's clip fields."""
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


@pytest.fixture(scope="session")
def motion_clips(tmp_path_factory):
    out = tmp_path_factory.mktemp("motion") / "clips"
    build_motion_clips(MotionClipsConfig(out=str(out), per_class=4, frames=8, size=32))
    return out


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
