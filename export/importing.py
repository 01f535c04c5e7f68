"""`edgekit import`: make a model edgekit did not train into an edgekit model by attaching a spec.

Sources:

- ``torchvision:ARCH`` (``torchvision:mobilenet_v2``): torchvision's ImageNet weights from its cache (either of
  its files), ImageNet labels, and its evaluation transform (resize the shorter side, centre crop).
- a torchvision **state dict** (``.pth``/``.pt``) of an architecture in the registry (``--arch``, else the
  first one it fits); a **pickled model** only with ``trust_pickle`` (unpickling runs code from the file).
- an **ONNX file** (for example from plain ``torch.onnx.export``): input size and layout are read from the
  graph, the spec goes into its ``metadata_props`` and a sidecar.

Torch sources become an edgekit checkpoint (``model.pt``), so quantize, export, verify, bench, run and
doctor work on it as on a trained model; its spec marks all data as evaluation data (``evaluate_all``),
since none of it was its training data. ONNX sources become ``model.onnx`` with the spec inside.
"""
from __future__ import annotations

import logging
import shutil
from importlib import resources
from dataclasses import dataclass
from pathlib import Path

from edgekit.core import checks
from edgekit.core.errors import BadInputError, require, writing
from edgekit.core.spec import COLORS, RESIZE_MODES, ModelSpec, sha256_file

log = logging.getLogger(__name__)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
LABEL_FILES = {"imagenet": "imagenet1k.txt"}  # built-in lists, in edgekit/data/labels/
TORCHVISION_PREFIX = "torchvision:"


@dataclass(frozen=True)
class ImportConfig:
    source: str  # torchvision:ARCH, a .pth/.pt state dict or pickled model, or an .onnx file
    out: str | None = None  # folder (default runs/import/<name>)
    arch: str | None = None  # registry name for a state dict (default: the first that fits)
    labels: str | None = None  # a file (one label per line) or "imagenet" (default for 1000 outputs)
    input_size: int | None = None  # default: 224 for torch sources, the graph's for ONNX
    resize: str | None = None  # squash / letterbox / crop (default: crop for ImageNet, squash otherwise)
    resize_to: int = 0
    color: str = "RGB"
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    scale: float = 1.0 / 255.0
    positive: str | None = None  # two classes: the positive label (must be the second)
    trust_pickle: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(self.mean))
        object.__setattr__(self, "std", tuple(self.std))
        if self.resize is not None:
            checks.one_of("--resize", self.resize, RESIZE_MODES)
        checks.one_of("--color", self.color, COLORS)
        if self.input_size is not None:
            checks.within("--imgsz", self.input_size, 8, 4096)
        checks.within("--resize-to", self.resize_to, 0, 8192)
        for name, values in (("--mean", self.mean), ("--std", self.std)):
            if len(values) not in (1, 3):
                raise BadInputError(f"{name} takes 1 or 3 comma-separated numbers, got {len(values)}")
            for value in values:
                checks.within(name, value, -1000, 1000)
        if any(s <= 0 for s in self.std):
            raise BadInputError("--std values must be > 0")


def read_labels(labels: str | None, outputs: int) -> tuple[str, ...]:
    """Labels from a file (one per line) or a built-in list; None means ImageNet for 1000 outputs."""
    if labels is None:
        if outputs != 1000:
            raise BadInputError(f"the model has {outputs} outputs: pass --labels FILE (one label per line)")
        labels = "imagenet"
    path = Path(str(resources.files("edgekit") / "data" / "labels" / LABEL_FILES[labels])) \
        if labels in LABEL_FILES else Path(labels)
    if not path.is_file():
        raise BadInputError(f"labels file not found: {labels} (a file with one label per line, or 'imagenet')")
    try:
        names = tuple(line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip())
    except (UnicodeDecodeError, OSError) as exc:
        raise BadInputError(f"cannot read labels file {path}: {type(exc).__name__}") from None
    if len(set(names)) != len(names):
        raise BadInputError(f"{path} lists a label twice")
    expected = 2 if outputs == 1 else outputs
    if len(names) != expected:
        raise BadInputError(f"{path} lists {len(names)} labels but the model has {outputs} output(s)"
                            + (" (one logit: 2 labels, the positive one second)" if outputs == 1 else ""))
    return names


def make_spec(cfg: ImportConfig, arch: str, labels: tuple[str, ...], input_size: tuple[int, int], outputs: int,
              resize: str, resize_to: int = 0, layout: str = "NCHW", channels: int = 3) -> ModelSpec:
    mean = cfg.mean * channels if len(cfg.mean) == 1 else cfg.mean
    std = cfg.std * channels if len(cfg.std) == 1 else cfg.std
    if channels == 1 and len(mean) == 3:
        mean, std = (sum(mean) / 3,), (sum(std) / 3,)
    positive = cfg.positive or ""
    if positive and (len(labels) != 2 or positive != labels[1]):
        raise BadInputError(f"--positive must be the second of two labels (the class the model's output "
                            f"scores); got {positive!r} for {list(labels)[:4]}")
    return ModelSpec(arch=arch, labels=labels, input_size=input_size, channels=channels, color=cfg.color,
                     layout=layout, scale=cfg.scale, mean=mean, std=std, binary=outputs == 1, positive=positive,
                     resize=cfg.resize or resize, resize_to=cfg.resize_to or (resize_to if (cfg.resize or resize) == "crop" else 0),
                     split={"evaluate_all": True})


def import_model(cfg: ImportConfig) -> tuple[Path, ModelSpec]:
    """Write the edgekit model for ``cfg.source``; returns its path and spec."""
    source = cfg.source
    if source.startswith(TORCHVISION_PREFIX):
        return _import_torchvision(cfg, source[len(TORCHVISION_PREFIX):])
    path = Path(source)
    if not path.is_file():
        raise BadInputError(f"model not found: {source} (a .pth/.pt, an .onnx, or torchvision:ARCH)")
    if path.suffix.lower() == ".onnx":
        return _import_onnx(cfg, path)
    if path.suffix.lower() in (".xml", ".bin"):
        raise BadInputError("OpenVINO IR import is not supported; import the ONNX or PyTorch model it came from")
    return _import_torch_file(cfg, path)


def _out_folder(cfg: ImportConfig, name: str) -> Path:
    folder = Path(cfg.out) if cfg.out else Path("runs/import") / name
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot write to {folder}: {exc.strerror}") from exc
    return folder


# ---- torch sources ----------------------------------------------------------------------------------------
def _import_torchvision(cfg: ImportConfig, arch: str) -> tuple[Path, ModelSpec]:
    require("torchvision", "train", "importing torchvision models")
    import torchvision.models as tvm

    from edgekit.models.registry import cached_imagenet_weights, get_arch, imagenet_state_dict

    entry = get_arch(arch)
    weights_enum = getattr(tvm, entry.weights)
    cached = cached_imagenet_weights(weights_enum)
    member = cached[0] if cached else weights_enum.DEFAULT
    state = imagenet_state_dict(arch, entry, "imagenet")
    resize_to = int(member.transforms().resize_size[0])
    info = {"source": f"{TORCHVISION_PREFIX}{arch}", "weights": member.name,
            "file": cached[1].name if cached else Path(member.url).name}
    return _write_checkpoint(cfg, arch, state, info, default_resize="crop", resize_to=resize_to,
                             default_labels="imagenet")


def _import_torch_file(cfg: ImportConfig, path: Path) -> tuple[Path, ModelSpec]:
    require("torch", "train", "importing PyTorch models")
    import pickle

    import torch

    from edgekit.models.checkpoint import CHECKPOINT_FORMAT, LOAD_ERRORS

    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if not cfg.trust_pickle:
            raise BadInputError(f"{path} is a pickled model, not a state dict: loading it runs code from the file. "
                                "If you trust it, pass --trust-pickle; better, save model.state_dict() and import "
                                "that with --arch") from exc
        payload = _load_pickled(path)
    except LOAD_ERRORS as exc:
        raise BadInputError(f"cannot read {path}: truncated or not a torch file ({type(exc).__name__})") from exc
    if isinstance(payload, dict) and payload.get("format") == CHECKPOINT_FORMAT:
        raise BadInputError(f"{path} is already an edgekit checkpoint: use it directly")
    if isinstance(payload, torch.nn.Module):
        state, arch_hint = payload.state_dict(), _arch_of_module(payload)
    elif isinstance(payload, dict):
        state = next((payload[k] for k in ("state_dict", "model_state_dict", "model") if isinstance(payload.get(k), dict)),
                     payload)
        arch_hint = None
    else:
        raise BadInputError(f"{path} holds a {type(payload).__name__}, not a state dict or a model")
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BadInputError(f"{path} is not a state dict (a mapping of parameter names to tensors)")
    arch = cfg.arch or arch_hint
    info = {"source": str(path), "sha256": sha256_file(path)}
    return _write_checkpoint(cfg, arch, dict(state), info, default_resize="squash", resize_to=0, default_labels=None)


def _load_pickled(path: Path):
    import warnings

    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # unpickling runs arbitrary code: report what it raised as one line
            raise BadInputError(f"cannot unpickle {path}: {type(exc).__name__}: {exc}") from exc


def _arch_of_module(module) -> str | None:
    return {"MobileNetV2": "mobilenet_v2"}.get(type(module).__name__)


def _outputs_of(state: dict) -> int:
    heads = sorted((k for k in state if k.startswith("classifier.") and k.endswith(".weight")),
                   key=lambda k: int(k.split(".")[1]) if k.split(".")[1].isdigit() else -1)
    if not heads:
        raise BadInputError("the state dict has no classifier.*.weight: not a torchvision classifier")
    return int(state[heads[-1]].shape[0])


def _fit_arch(arch: str | None, state: dict, outputs: int):
    """The registry model that loads ``state`` exactly (``arch``, or each registered one in turn)."""
    from edgekit.models.registry import ARCHS, HeadConfig, build_model

    candidates = [arch] if arch else [name for name, entry in ARCHS.items() if entry.task == "image"]
    reasons = []
    for name in candidates:
        model = build_model(name, outputs, HeadConfig(dropout=0.2, hidden=0), "none")
        try:
            model.load_state_dict(state, strict=True)
            return name, model
        except RuntimeError as exc:
            reasons.append(f"{name}: {str(exc).splitlines()[0][:120]}")
    raise BadInputError("the state dict fits no registered architecture (" + "; ".join(reasons) + ")")


def _write_checkpoint(cfg: ImportConfig, arch: str | None, state: dict, info: dict, default_resize: str,
                      resize_to: int, default_labels: str | None) -> tuple[Path, ModelSpec]:
    from edgekit.models.checkpoint import Checkpoint, save_checkpoint, torch_versions

    outputs = _outputs_of(state)
    arch, model = _fit_arch(arch, state, outputs)
    labels = read_labels(cfg.labels or (default_labels if outputs == 1000 else None), outputs)
    size = cfg.input_size or 224
    spec = make_spec(cfg, arch, labels, (size, size), outputs, default_resize, resize_to)
    spec = spec.replace(versions=torch_versions())
    folder = _out_folder(cfg, arch)
    ckpt = Checkpoint(spec, {"arch": arch, "head": {"dropout": 0.2, "hidden": 0}}, model.state_dict(), [],
                      {"imported": info})
    path = save_checkpoint(folder / "model.pt", ckpt)
    log.info("imported %s as %s (%s, %d labels, %dx%d, resize %s)", info["source"], path, arch, len(labels),
             size, size, spec.resize)
    return path, spec


# ---- ONNX ------------------------------------------------------------------------------------------------
def _import_onnx(cfg: ImportConfig, path: Path) -> tuple[Path, ModelSpec]:
    onnx = require("onnx", "export", "importing ONNX models")
    from edgekit.export.onnx_format import set_metadata
    from edgekit.core.artifacts import write_sidecar

    try:
        proto = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, ValueError, OSError... for a foreign or broken file
        raise BadInputError(f"cannot read ONNX file {path}: {type(exc).__name__}") from exc
    graph_inputs = [i for i in proto.graph.input if i.name not in {init.name for init in proto.graph.initializer}]
    if len(graph_inputs) != 1 or len(proto.graph.output) < 1:
        raise BadInputError(f"{path}: edgekit imports image classifiers with one input; this graph has "
                            f"{len(graph_inputs)} inputs and {len(proto.graph.output)} outputs")
    dims = [d.dim_value if d.HasField("dim_value") else None for d in graph_inputs[0].type.tensor_type.shape.dim]
    out_dims = [d.dim_value if d.HasField("dim_value") else None for d in proto.graph.output[0].type.tensor_type.shape.dim]
    if len(dims) != 4 or graph_inputs[0].type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
        raise BadInputError(f"{path}: the input must be a float32 image batch (N, C, H, W) or (N, H, W, C), got "
                            f"{len(dims)} dimensions")
    layout = "NHWC" if dims[3] in (1, 3) and dims[1] not in (1, 3) else "NCHW"
    channels, height, width = (dims[1], dims[2], dims[3]) if layout == "NCHW" else (dims[3], dims[1], dims[2])
    if channels not in (1, 3):
        raise BadInputError(f"{path}: the input has {channels} channels; edgekit models take 1 or 3")
    if height is None or width is None:
        if cfg.input_size is None:
            raise BadInputError(f"{path}: the input size is dynamic; pass --imgsz")
        height = width = cfg.input_size
    elif cfg.input_size is not None and (height, width) != (cfg.input_size, cfg.input_size):
        raise BadInputError(f"{path}: the graph takes {height}x{width}, not --imgsz {cfg.input_size}")
    outputs = out_dims[-1] if out_dims else None
    if not isinstance(outputs, int) or outputs < 1:
        raise BadInputError(f"{path}: the output's last dimension (the number of classes) is not fixed")
    labels = read_labels(cfg.labels, outputs)
    imagenet = outputs == 1000 and (cfg.labels in (None, "imagenet"))
    spec = make_spec(cfg, path.stem, labels, (height, width), outputs, "crop" if imagenet else "squash",
                     round(max(height, width) / 0.875) if imagenet else 0, layout, channels)
    folder = _out_folder(cfg, path.stem)
    target = folder / "model.onnx"
    tmp = target.with_name(f".{target.name}.tmp")
    precision = "int8" if any(n.op_type in ("QuantizeLinear", "QLinearConv") for n in proto.graph.node) else "fp32"
    spec = spec.replace(precision=precision)
    set_metadata(proto, spec)
    try:
        with writing(target):
            onnx.save(proto, str(tmp))
            shutil.move(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()
    write_sidecar(target, spec, {"format": "onnx", "precision": precision, "imported": {"source": str(path),
                                                                                    "sha256": sha256_file(path)}})
    log.info("imported %s as %s (%d labels, %dx%d %s, resize %s)", path, target, len(labels), height, width, layout,
             spec.resize)
    return target, spec
