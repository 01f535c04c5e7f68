import json

import numpy as np
import pytest

from edgekit.core.errors import BadInputError
from edgekit.core.spec import FASHION_MNIST_LABELS, ModelSpec, preprocess


def make_spec(**changes):
    return ModelSpec(arch="mobilenet_v2", labels=("a", "b", "c"), **changes)


def test_spec_round_trips_through_json_and_file(tmp_path):
    spec = make_spec(input_size=(24, 40), quantization={"scheme": "x", "engine": "x86"}, versions={"torch": "2"})
    assert ModelSpec.from_json(spec.to_json()) == spec
    path = spec.save(tmp_path / "spec.json")
    assert ModelSpec.load(path) == spec
    assert json.loads(path.read_text())["format"] == "edgekit-spec/1"


@pytest.mark.parametrize("changes, message", [
    ({"color": "YUV"}, "color"),
    ({"channels": 1}, "mean/std"),
    ({"std": (0.2, 0.0, 0.2)}, "std"),
    ({"binary": True}, "binary"),
    ({"input_size": (0, 32)}, "input_size"),
])
def test_invalid_specs_are_rejected_with_the_reason(changes, message):
    with pytest.raises(BadInputError, match=message):
        make_spec(**changes)


def test_spec_file_with_unknown_field_or_bad_json_is_a_clean_error(tmp_path):
    data = make_spec().to_dict()
    data["colour"] = "RGB"
    with pytest.raises(BadInputError, match="unknown fields: colour"):
        ModelSpec.from_dict(data)
    with pytest.raises(BadInputError, match="not valid JSON"):
        ModelSpec.from_json("{not json")


def test_preprocess_converts_bgr_to_rgb_and_normalises():
    spec = make_spec(input_size=(2, 2), mean=(0.0, 0.5, 1.0), std=(1.0, 0.5, 2.0))
    bgr = np.zeros((2, 2, 3), np.uint8)
    bgr[..., 0] = 255  # blue
    out = preprocess(bgr, spec, source_color="BGR")
    assert out.shape == (3, 2, 2) and out.dtype == np.float32
    np.testing.assert_allclose(out[0], 0.0)            # red plane: (0 - 0) / 1
    np.testing.assert_allclose(out[1], -1.0)           # green: (0 - 0.5) / 0.5
    np.testing.assert_allclose(out[2], 0.0, atol=1e-6)  # blue: (1 - 1) / 2


def test_preprocess_gray_source_for_a_three_channel_network_and_resize():
    spec = make_spec(input_size=(8, 8), mean=(0, 0, 0), std=(1, 1, 1))
    gray = np.full((16, 16), 51, np.uint8)
    out = preprocess(gray, spec, source_color="GRAY")
    assert out.shape == (3, 8, 8)
    np.testing.assert_allclose(out, 51 / 255, rtol=1e-6)


def test_preprocess_single_channel_network_uses_luma_and_nhwc_layout():
    spec = ModelSpec(arch="m", labels=FASHION_MNIST_LABELS, channels=1, color="GRAY", mean=(0.0,), std=(1.0,),
                     input_size=(4, 4), layout="NHWC")
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 1] = 255  # pure green: luma 0.587 * 255
    out = preprocess(bgr, spec, source_color="BGR")
    assert out.shape == (4, 4, 1)
    np.testing.assert_allclose(out, round(0.587 * 255) / 255, atol=1 / 255)


def test_preprocess_rejects_wrong_dtype_and_shape():
    spec = make_spec()
    with pytest.raises(BadInputError, match="uint8"):
        preprocess(np.zeros((32, 32, 3), np.float32), spec)
    with pytest.raises(BadInputError, match="shape"):
        preprocess(np.zeros((32, 32, 4), np.uint8), spec)
