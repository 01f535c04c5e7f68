"""Apps come from a registry and implement the App protocol; settings are checked when built; the attend
app reads the score of the model's recorded positive label."""
import numpy as np
import pytest

from edgekit.core.errors import BadInputError, UnknownNameError
from edgekit.edge_apps.apps import APPS, App, AppSettings, Timer, app_class, build_app
from edgekit.edge_apps.faces import load_detector


@pytest.fixture(scope="module")
def binary_runtime(binary_models):
    from edgekit.runtimes import RuntimeOptions, load_runtime

    rt = load_runtime(str(binary_models["onnxruntime"]), None, RuntimeOptions(threads=1))
    yield rt
    rt.close()


@pytest.fixture(scope="module")
def clip_runtime(clip_exported):
    from edgekit.runtimes import RuntimeOptions, load_runtime

    rt = load_runtime(str(clip_exported[0] / "fp32" / "model.onnx"), None, RuntimeOptions(threads=1))
    yield rt
    rt.close()


@pytest.mark.parametrize("name", sorted(APPS))
def test_every_registered_app_implements_the_protocol(name, request):
    runtime = request.getfixturevalue("clip_runtime" if name == "clip" else "binary_runtime")  # clip: a clip model
    cls = app_class(name)
    assert cls.name == name and cls.default_faces in ("none", "haar")
    settings = AppSettings(safe_label=runtime.spec.labels[0])  # the driver app needs a safe class
    app = build_app(name, runtime, Timer(), load_detector(cls.default_faces), settings)
    assert isinstance(app, App)
    for t in range(12):  # the clip app decides once its buffer is full
        analysis, events = app.analyze(np.zeros((48, 64, 3), np.uint8), t / 10)
        assert isinstance(analysis.label, str) and 0.0 <= analysis.score <= 1.0 and isinstance(events, list)
    if name == "clip":  # 4 frames, every 2nd: the 7th frame fills the buffer, then one decision per frame taken
        assert app.classify.inferences == 3


def test_an_object_without_analyze_is_not_an_app():
    class Half:
        name, classify, face_search, prepare = "half", None, {}, None

    assert not isinstance(Half(), App)


def test_unknown_app_suggests_the_close_name():
    with pytest.raises(UnknownNameError, match="Did you mean 'attend'"):
        app_class("atend")


@pytest.mark.parametrize("fields, fragment", [({"window": 0}, "--window"), ({"perclos_threshold": 1.5}, "--perclos-threshold"),
                                              ({"smooth": "median:3"}, "--smooth"), ({"alert_after": -1}, "--alert-after"),
                                              ({"perclos_seconds": float("nan")}, "--perclos-seconds")])
def test_app_settings_refuse_nonsense_when_built(fields, fragment):
    with pytest.raises(BadInputError, match=fragment):
        AppSettings(**fields)


def test_attend_scores_the_recorded_positive_label(binary_runtime):
    spec = binary_runtime.spec
    assert spec.positive == "attentive" and spec.labels == ("not_attentive", "attentive")
    app = build_app("attend", binary_runtime, Timer(), load_detector("haar"))
    assert app.positive == spec.labels.index("attentive")
    other = build_app("attend", binary_runtime, Timer(), load_detector("haar"), AppSettings(positive="not_attentive"))
    assert other.positive == 0
