"""Load any edgekit checkpoint as a ready-to-run torch module, FP32 or INT8, and run it.

An INT8 checkpoint stores the quantized state dict plus its recipe (scheme, engine) in its spec. Loading
rebuilds the float module from the registry, replays the FX prepare/convert of that recipe to get the
quantized structure, then loads the weights: the structure is part of the checkpoint format, so it lives
here, below the runtimes and the exporters that load checkpoints. The calibration recipe that *makes*
INT8 checkpoints is in edgekit.training.quantize.

Why ``torch.ao.quantization`` FX graph mode: in torch 2.14 it is the path that quantizes a stock
torchvision MobileNet (residual adds, ReLU6, hardswish, SE blocks) without hand-edited model code, fuses
Conv-BN-ReLU and runs INT8 kernels in eager mode. torch marks ``torch.ao.quantization`` deprecated and
emits a warning per observer (~1,800 for MobileNetV2); :func:`quiet_torch_ao` silences exactly those
messages, nothing else.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import warnings

import numpy as np

from edgekit.core.data import SPLIT_KEYS, load_split
from edgekit.core.errors import BadInputError
from edgekit.models.checkpoint import Checkpoint

_TORCH_AO_NOISE = (
    (DeprecationWarning, r"torch\.ao\.quantization is deprecated"),
    (UserWarning, r"Please use quant_min and quant_max"),
    (UserWarning, r"torch\.quantize_per_tensor, torch\.quantize_per_channel"),
    (UserWarning, r"must run observer before calling calculate_qparams"),
    (UserWarning, r"TypedStorage is deprecated"),
)


@contextlib.contextmanager
def quiet_torch_ao():
    """Hide torch.ao's per-call deprecation notices (see module docstring); other warnings still show."""
    with warnings.catch_warnings():
        for category, message in _TORCH_AO_NOISE:
            warnings.filterwarnings("ignore", message=message, category=category)
        yield


def float_model(ckpt: Checkpoint):
    """The float module of a checkpoint's architecture with its head, weights not loaded; a channel-pruned
    checkpoint's recorded plan is replayed on it (see edgekit.models.pruning)."""
    from edgekit.models.registry import HeadConfig, build_model

    model = build_model(ckpt.model["arch"], ckpt.spec.num_outputs, HeadConfig(**ckpt.model["head"]), "none").eval()
    pruning = ckpt.model.get("pruning") or {}
    if pruning.get("plan"):
        from edgekit.models.pruning import replay_channel_plan

        replay_channel_plan(model, example_input(ckpt.spec), pruning["plan"])
    return model


def example_input(spec):
    import torch

    return torch.zeros(spec.input_shape(1) if spec.layout == "NCTHW" else (1, spec.channels, *spec.input_size))


@functools.lru_cache(maxsize=None)
def _mean_min_max_observer():
    import torch
    from torch.ao.quantization.observer import MinMaxObserver

    class MeanMinMaxObserver(MinMaxObserver):
        """Per-tensor activation range = the mean over calibration images of each image's min and max (what
        NNCF uses for activations), instead of the extremes over all images: a few outlier images no longer
        stretch the scale that every image is quantized with."""

        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self.register_buffer("images_seen", torch.tensor(0))

        def forward(self, x_orig):
            if x_orig.numel() == 0:
                return x_orig
            per_image = x_orig.detach().to(self.min_val.dtype).reshape(x_orig.shape[0], -1)
            seen, batch = int(self.images_seen), per_image.shape[0]
            total = seen + batch
            low, high = per_image.amin(1).sum(), per_image.amax(1).sum()
            if seen:
                low, high = low + self.min_val * seen, high + self.max_val * seen
            self.min_val.resize_(()).copy_(low / total)
            self.max_val.resize_(()).copy_(high / total)
            self.images_seen.fill_(total)
            return x_orig

    return MeanMinMaxObserver


def qconfig_mapping(engine: str, reduce_range: bool = False):
    """The engine's default mapping (fixed ranges for sigmoid-like ops) with edgekit's recipe: per-channel
    symmetric INT8 weights and per-tensor activations whose range is the mean of each calibration image's
    min and max.

    Measured on torchvision's ImageNet MobileNetV2 (300 unlabelled calibration images, 136 other real photos;
    benchmarks/results/imagenet_int8.txt): the squared error of the INT8 logits against FP32 was 0.13 with
    mean ranges, 0.43 with the extremes over all images and 0.74 with torch's default histogram observer.
    torch's x86 default also uses 7-bit activations (``reduce_range``) so that AVX2 kernels without VNNI can
    never saturate their 16-bit intermediate sums; that cost 0.6 pp more accuracy on MobileNetV2 /
    Fashion-MNIST (measured on an AVX-512 VNNI Xeon, see benchmarks/results), so full range is our default;
    on an AVX2-only CPU, compare both with ``--reduce-range``.
    """
    from torch.ao.quantization import QConfig, get_default_qconfig_mapping
    from torch.ao.quantization.observer import default_per_channel_weight_observer

    with quiet_torch_ao():
        return get_default_qconfig_mapping(engine).set_global(
            QConfig(activation=_mean_min_max_observer().with_args(reduce_range=reduce_range),
                    weight=default_per_channel_weight_observer))


def _clip_to_relu6(observer, args):
    """Forward pre-hook of an observer next to a ReLU6: it sees (and passes on) its input clipped to [0, 6]."""
    return (args[0].clamp(0.0, 6.0), *args[1:])


def clamp_relu6_ranges(prepared) -> int:
    """Make the observers (or, for quantization-aware training, fake quantizers) around every ReLU6 see their
    input clipped to [0, 6]; returns how many were changed.

    torch's backends do not fuse Conv-BN-ReLU6; ReLU6 "shares quantization parameters with its input",
    so the convolution's *pre-activation* range (often -40..+40) would set the scale of a tensor whose
    useful values lie in [0, 6]. Observing the clipped values gives a range [0, m] with m <= 6: the
    quantized convolution's own saturation computes ReLU6 exactly, and all 256 levels go to the values that
    survive it. (Clipping before a ReLU6 changes nothing it outputs.) On MobileNetV2 / Fashion-MNIST this
    took the INT8 loss from about 3 pp to well under 1 pp. The range is calibrated, not fixed at [0, 6]:
    most ReLU6 outputs of torchvision's ImageNet MobileNetV2 stay under 1-3, and a fixed [0, 6] scale left
    them 40-130 of the 256 levels (INT8 top-1 agreed with FP32 on 0.67 of 136 real photos; calibrated, see
    benchmarks/results/imagenet_int8.txt).
    """
    import torch
    from torch.ao.quantization.fake_quantize import FixedQParamsFakeQuantize
    from torch.ao.quantization.observer import FixedQParamsObserver

    modules = dict(prepared.named_modules(remove_duplicate=False))
    clipped: set[int] = set()
    for node in prepared.graph.nodes:
        is_relu6 = (node.op == "call_module" and isinstance(modules.get(node.target), torch.nn.ReLU6)) or \
                   (node.op == "call_function" and node.target is torch.nn.functional.relu6)
        if not is_relu6:
            continue
        neighbours = [node.args[0], *node.users]  # the observer before (shared) and after
        for obs_node in neighbours:
            observer = modules.get(obs_node.target) if obs_node.op == "call_module" else None
            if observer is None or not hasattr(observer, "quant_min") or id(observer) in clipped or \
                    isinstance(observer, (FixedQParamsObserver, FixedQParamsFakeQuantize)):
                continue
            observer.register_forward_pre_hook(_clip_to_relu6)  # one module, even where it has several names
            clipped.add(id(observer))
    return len(clipped)


def keep_float_modules(model, keep: tuple[str, ...] | list[str]) -> list[str]:
    """Resolve ``--keep-float`` on a torch module: ``first`` (the first convolution), ``last`` (the last
    convolution or linear layer, the classifier), ``depthwise`` (every grouped convolution) or module names."""
    import torch

    layers = [name for name, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    names = dict(model.named_modules())
    chosen = []
    for item in keep:
        if item == "depthwise":
            grouped = [name for name in layers if getattr(names[name], "groups", 1) > 1]
            if not grouped:
                raise BadInputError("--keep-float depthwise: no grouped (depthwise) convolution in the model")
            chosen.extend(grouped)
        elif item in ("first", "last"):
            chosen.append(layers[0] if item == "first" else layers[-1])
        elif item in names:
            chosen.append(item)
        else:
            raise BadInputError(f"--keep-float: no module named {item!r} (use first, last, depthwise, or e.g. {', '.join(layers[:3])})")
    return list(dict.fromkeys(chosen))


def prepare_static(model, spec, engine: str, reduce_range: bool = False, keep_float: tuple[str, ...] = ()):
    """Fuse Conv-BN(-ReLU), insert observers (FX graph mode) and clip the ranges around ReLU6 to [0, 6]; the
    modules in ``keep_float`` (resolved names) stay in float."""
    import torch
    from torch.ao.quantization.quantize_fx import prepare_fx

    torch.backends.quantized.engine = engine
    mapping = qconfig_mapping(engine, reduce_range)
    for name in keep_float:
        mapping.set_module_name(name, None)
    with quiet_torch_ao():
        prepared = prepare_fx(copy.deepcopy(model).eval(), mapping, (example_input(spec),))
    clamp_relu6_ranges(prepared)
    return prepared


def prepare_qat(model, spec, engine: str, reduce_range: bool = False, keep_float: tuple[str, ...] = ()):
    """Quantization-aware training: the same recipe as :func:`prepare_static` (per-channel symmetric INT8
    weights, per-tensor activations, ranges around ReLU6 clipped to [0, 6], Conv-BN fused) with fake
    quantizers that track moving-average min/max ranges, in train mode. ``convert_static`` of the trained
    result gives the same module structure as post-training INT8, so a QAT checkpoint loads like any other."""
    import torch
    from torch.ao.quantization import FakeQuantize, QConfig, get_default_qat_qconfig_mapping
    from torch.ao.quantization.observer import MovingAverageMinMaxObserver, MovingAveragePerChannelMinMaxObserver
    from torch.ao.quantization.quantize_fx import prepare_qat_fx

    torch.backends.quantized.engine = engine
    activation = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, quant_min=0,
                                        quant_max=127 if reduce_range else 255, dtype=torch.quint8,
                                        qscheme=torch.per_tensor_affine)
    weight = FakeQuantize.with_args(observer=MovingAveragePerChannelMinMaxObserver, quant_min=-128, quant_max=127,
                                    dtype=torch.qint8, qscheme=torch.per_channel_symmetric, ch_axis=0)
    with quiet_torch_ao():
        mapping = get_default_qat_qconfig_mapping(engine).set_global(QConfig(activation=activation, weight=weight))
        for name in keep_float:
            mapping.set_module_name(name, None)
        prepared = prepare_qat_fx(copy.deepcopy(model).train(), mapping, (example_input(spec),))
    clamp_relu6_ranges(prepared)
    return prepared


def convert_static(prepared, float_logits: bool = False):
    """The INT8 model of a calibrated (or quantization-aware trained) ``prepared`` model. ``float_logits``:
    the final Linear layer gives float logits (see :func:`float_logits_classifier`)."""
    import torch
    from torch.ao.quantization.quantize_fx import convert_fx

    with quiet_torch_ao():
        converted = convert_fx(copy.deepcopy(prepared).eval() if prepared.training else prepared)
    if torch.backends.quantized.engine == "qnnpack":
        route_relu6_around_qnnpack_clamp(converted)
    if float_logits:
        float_logits_classifier(converted)
    return converted


@functools.lru_cache(maxsize=None)
def _int8_weight_linear():
    import torch

    class Int8WeightLinear(torch.nn.Module):
        """A Linear layer with per-output-channel INT8 weights, a float input and a float output. (The float
        weights are made per call: a cached copy changes the graph torch.onnx traces between calls.)"""

        def __init__(self, weight_int8, scales, bias):
            super().__init__()
            self.register_buffer("weight_int8", weight_int8)
            self.register_buffer("scales", scales)
            self.register_buffer("bias", bias)

        def forward(self, x):
            weight = self.weight_int8.to(torch.float32) * self.scales[:, None]
            return torch.nn.functional.linear(x.dequantize(), weight, self.bias)

    return Int8WeightLinear


def float_logits_classifier(converted) -> str | None:
    """Replace the final quantized Linear of a converted model by one with the same INT8 weights whose output
    stays float; returns its name, or None when the model does not end in a Linear.

    Quantized to 8 bits, the logits of a 1000-class network have one level every ~0.1: on torchvision's
    ImageNet MobileNetV2, 13 of 136 real photos got two or more classes tied at the top (argmax then takes the
    lower index), and top-1 agreement with FP32 was 0.728 instead of 0.765 with float logits. The layer is
    1/300 of MobileNetV2's multiply-adds; its weights stay INT8, so the size does not change."""
    import torch
    from torch.ao.nn.quantized import Conv2d as QConv2d, Linear as QLinear

    modules = dict(converted.named_modules())
    layers = [node for node in converted.graph.nodes if node.op == "call_module"
              and isinstance(modules.get(node.target), (QConv2d, QLinear))]
    if not layers or not isinstance(modules[layers[-1].target], QLinear):
        return None
    node = layers[-1]
    layer = modules[node.target]
    weight = layer.weight()
    if weight.qscheme() in (torch.per_channel_symmetric, torch.per_channel_affine):
        scales = weight.q_per_channel_scales().to(torch.float32)
    else:
        scales = torch.full((weight.shape[0],), weight.q_scale(), dtype=torch.float32)
    bias = layer.bias() if layer.bias() is not None else torch.zeros(weight.shape[0])
    converted.set_submodule(node.target, _int8_weight_linear()(weight.int_repr(), scales, bias.detach().clone()))
    # Its output is float now: drop the dequantize that followed it (torch.onnx refuses one on a float tensor).
    for user in list(node.users):
        if (user.op == "call_method" and user.target == "dequantize") or \
                (user.op == "call_function" and user.target is torch.dequantize):
            user.replace_all_uses_with(node)
            converted.graph.erase_node(user)
    converted.recompile()
    return node.target


def relu6_any_layout(x):
    """ReLU6 that gives the right values on qnnpack (see :func:`route_relu6_around_qnnpack_clamp`).

    A quantized tensor whose qparams span [0, m] with m <= 6 (what :func:`clamp_relu6_ranges` gives the
    convolution before every ReLU6) holds nothing outside [0, 6]: ReLU6 is the identity on it. Anything else
    is made contiguous first, the layout qnnpack's clamp handles correctly."""
    import torch

    if x.is_quantized and x.dtype == torch.quint8 and x.q_zero_point() == 0 and x.q_scale() * 255 <= 6.0 + 1e-6:
        return x
    return torch.nn.functional.relu6(x.contiguous() if x.is_quantized else x)


def route_relu6_around_qnnpack_clamp(converted) -> int:
    """Replace every ReLU6 of a converted model by :func:`relu6_any_layout`; returns how many.

    torch 2.14's qnnpack clamp (behind quantized relu6, hardtanh and clamp) allocates its output in the
    default layout but fills it in the input's channels-last order, and qnnpack convolutions return
    channels-last tensors: after Conv -> ReLU6 the values land on the wrong pixels and channels. On the
    ImageNet MobileNetV2 the first block's output was off by 110% of its mean magnitude and top-1 agreed with
    FP32 on 0 of 136 photos. The same code runs on ARM, so every ReLU6 network quantized for a Raspberry Pi
    was affected. ``tests/test_training.py`` checks a qnnpack model against FP32.
    """
    import torch

    modules = dict(converted.named_modules())
    changed = 0
    for node in list(converted.graph.nodes):
        is_module = node.op == "call_module" and isinstance(modules.get(node.target),
                                                             (torch.nn.ReLU6, torch.ao.nn.quantized.ReLU6))
        is_function = node.op == "call_function" and node.target is torch.nn.functional.relu6
        if not (is_module or is_function):
            continue
        with converted.graph.inserting_after(node):
            replacement = converted.graph.call_function(relu6_any_layout, (node.args[0],))
        node.replace_all_uses_with(replacement)
        converted.graph.erase_node(node)
        changed += 1
    if changed:
        converted.delete_all_unused_submodules()
        converted.recompile()
    return changed


def quantize_dynamic(model):
    import torch
    from torch.ao.quantization import quantize_dynamic as ao_dynamic

    with quiet_torch_ao():
        return ao_dynamic(copy.deepcopy(model).eval(), {torch.nn.Linear}, dtype=torch.qint8)


def load_model(ckpt: Checkpoint):
    """A ready-to-run module for any edgekit checkpoint, FP32 or INT8."""
    import torch

    model = float_model(ckpt)
    recipe = ckpt.spec.quantization
    if recipe.get("scheme") == "pytorch-fx-static":
        # Replay the structure: observers that never saw data give placeholder qparams, which the
        # state dict below overwrites with the calibrated ones.
        model = convert_static(prepare_static(model, ckpt.spec, recipe["engine"], recipe.get("reduce_range", False),
                                              tuple(recipe.get("keep_float", ()))), recipe.get("float_logits", False))
    elif recipe.get("scheme") == "pytorch-dynamic":
        torch.backends.quantized.engine = recipe["engine"]
        model = quantize_dynamic(model)
    with quiet_torch_ao():
        try:
            model.load_state_dict(ckpt.state_dict)
        except RuntimeError as exc:
            raise BadInputError(f"checkpoint weights do not fit its architecture {ckpt.model['arch']}: "
                                f"{str(exc).splitlines()[0]}") from exc
    return model.eval()


def run_model(model, batches) -> np.ndarray:
    import torch

    with torch.inference_mode(), quiet_torch_ao():
        return np.concatenate([model(torch.from_numpy(np.asarray(b))).numpy() for b in batches])


def checkpoint_data(ckpt: Checkpoint, data: str):
    """The checkpoint's own data split (same seed and fractions as training), so test means test."""
    if ckpt.spec.split:
        table = load_split(data, **ckpt.spec.split)
    else:  # a checkpoint from before specs recorded their split: the training config it saved
        recorded = ckpt.metrics.get("config", {})
        table = load_split(data, **{k: recorded[k] for k in SPLIT_KEYS if k in recorded})
    table.relabel(ckpt.spec.labels, data)  # the model's label order (a chosen positive class comes second)
    return table
