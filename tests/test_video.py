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
