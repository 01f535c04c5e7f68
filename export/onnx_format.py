"""ONNX: FP32 from the PyTorch checkpoint, and QDQ INT8 with ONNX Runtime's static quantizer.

Opset 17 and IR version 8 are pinned: that pair loads in onnxruntime 1.12 and newer (the ONNX Runtime
compatibility table), which covers the wheels Raspberry Pi OS users still run. We use torch's
TorchScript-based exporter (``dynamo=False``): it writes one self-contained file, folds nothing we need
to keep, and is the exporter that also understands torch's quantized modules.
"""
from __future__ import annotations

import contextlib
import logging
import warnings
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from edgekit.core.errors import BadInputError, require
from edgekit.core.artifacts import METADATA_KEY
from edgekit.core.spec import ModelSpec

log = logging.getLogger(__name__)

OPSET = 17
IR_VERSION = 8
MIN_ONNXRUNTIME = "1.12"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


class BakedPreprocess:
    """Factory for a torch module that takes uint8 NHWC frames and normalises inside the graph."""

    @staticmethod
    def wrap(model, spec: ModelSpec, input_color: str):
        import torch

        class _Baked(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.model = model
                c = spec.channels
                scale = torch.tensor(spec.scale, dtype=torch.float32) / torch.tensor(spec.std, dtype=torch.float32)
                shift = -torch.tensor(spec.mean, dtype=torch.float32) / torch.tensor(spec.std, dtype=torch.float32)
                self.register_buffer("scale", scale.reshape(1, c, 1, 1))
                self.register_buffer("shift", shift.reshape(1, c, 1, 1))
                # Reverse the colour planes when the frames arrive in the other order (BGR vs RGB).
                order = [2, 1, 0] if c == 3 and input_color != spec.color else list(range(c))
                self.register_buffer("order", torch.tensor(order, dtype=torch.int64))

            def forward(self, frames):
                x = frames.permute(0, 3, 1, 2).to(torch.float32)
                x = torch.index_select(x, 1, self.order)
                return self.model(x * self.scale + self.shift)

        return _Baked().eval()


def baked_spec(spec: ModelSpec, input_color: str) -> ModelSpec:
    if spec.channels == 1 and input_color != "GRAY":
        raise BadInputError("this model takes one grayscale plane: bake with --input-color GRAY")
    if spec.channels == 3 and input_color not in ("BGR", "RGB"):
        raise BadInputError("this model takes colour images: bake with --input-color BGR or RGB")
    return spec.replace(dtype="uint8", layout="NHWC", color=input_color)


@contextlib.contextmanager
def _quiet_exporter():
    """torch announces that the TorchScript exporter is deprecated on every call; we chose it on purpose."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*dynamo=False.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r".*TorchScript-based ONNX export.*", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=r"The feature will be removed", category=DeprecationWarning)
        # The TorchScript exporter traces with torch.jit, which announces its own deprecation (a quantized
        # checkpoint also reads its scales as Python floats while tracing: constants, as they should be).
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.trace", category=FutureWarning)
        warnings.filterwarnings("ignore", message=r"Converting a tensor to a Python float")
        yield


def set_metadata(model_proto, spec: ModelSpec) -> None:
    del model_proto.metadata_props[:]
    entry = model_proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, spec.to_json()


def read_metadata_spec(path: str | Path) -> ModelSpec | None:
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    for entry in model.metadata_props:
        if entry.key == METADATA_KEY:
            return ModelSpec.from_json(entry.value)
    return None


def export_fp32(model, spec: ModelSpec, path: Path, dynamic_batch: bool) -> None:
    """torch module -> one self-contained .onnx file with opset 17 / IR 8 and the spec in metadata."""
    import torch

    onnx = require("onnx", "export", "ONNX export")

    shape = spec.input_shape(1)
    example = torch.zeros(shape, dtype=torch.uint8 if spec.dtype == "uint8" else torch.float32)
    axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}} if dynamic_batch else None
    with _quiet_exporter(), torch.inference_mode(False), torch.no_grad():
        torch.onnx.export(model.eval(), (example,), str(path), dynamo=False, opset_version=OPSET,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes)
    proto = onnx.load(str(path))
    proto.ir_version = IR_VERSION
    set_metadata(proto, spec)
    onnx.checker.check_model(proto)
    onnx.save(proto, str(path))


class _BatchReader:
    """ONNX Runtime CalibrationDataReader over edgekit's calibration iterator (split to the graph's batch)."""

    def __init__(self, batches: Iterable[np.ndarray], fixed_batch: int | None):
        self._items = self._split(batches, fixed_batch)

    @staticmethod
    def _split(batches, fixed_batch) -> Iterator[dict]:
        for batch in batches:
            if fixed_batch:
                for start in range(0, len(batch), fixed_batch):
                    yield {INPUT_NAME: batch[start:start + fixed_batch]}
            else:
                yield {INPUT_NAME: batch}

    def get_next(self):
        return next(self._items, None)

    def rewind(self):  # the iterator is single-pass; ORT only needs one pass for MinMax/Entropy/Percentile
        pass


# The CPU an INT8 model is made for (--target) and what its integer kernels need. The 16-bit saturation that
# reduce_range (onnxruntime's route) and NNCF's overflow fix work around is an x86 problem: without VNNI,
# pmaddubsw adds two u8*s8 products in 16 bits. ARM kernels widen each product (Cortex-A72, Pi 4) or use the
# dot-product instructions (Cortex-A76, Pi 5), so neither needs it.
TARGETS = {
    "host": "this machine's CPU",
    "pi4": "Raspberry Pi 4 (Cortex-A72, aarch64, no dot product)",
    "pi5": "Raspberry Pi 5 (Cortex-A76, aarch64, dot product)",
    "arm64": "an aarch64 CPU",
    "x86-avx2": "an x86 CPU with AVX2 and no VNNI",
    "x86-vnni": "an x86 CPU with AVX-512 VNNI or AVX-VNNI",
}


def int8_defaults(target: str = "host") -> dict:
    """INT8 settings for ``target`` (see TARGETS): activation type, reduce_range (7-bit activations on
    onnxruntime's route) and NNCF's overflow fix ("enable": 7-bit weights everywhere, "first_layer_only", "disable")."""
    from edgekit.core.hardware import has_int8_dot_product

    if target not in TARGETS:
        raise BadInputError(f"unknown --target {target!r} (choose from {', '.join(TARGETS)})")
    if target == "host":
        saturates = not has_int8_dot_product()
    else:
        saturates = target == "x86-avx2"
    arm = target in ("pi4", "pi5", "arm64")
    return {"activation_type": "u8", "reduce_range": saturates, "target": target,
            "overflow_fix": "enable" if saturates else "disable" if arm else "first_layer_only"}


def target_note(target: str) -> str | None:
    """A line for the user when the INT8 model is made for another kind of CPU than this one."""
    from edgekit.core.hardware import is_arm

    if target == "host":
        return None
    arm_target = target in ("pi4", "pi5", "arm64")
    if arm_target != is_arm():
        return (f"INT8 made for {TARGETS[target]}: verified here on this machine's kernels, not on the target's; "
                f"run `edgekit bench` / `edgekit verify` on the device to check")
    return None


def drop_unused_opsets(proto) -> None:
    """Remove opset imports of domains no node uses. ``quant_pre_process`` saves through onnxruntime,
    which stamps every domain it knows (e.g. ai.onnx.ml 5); older onnxruntime builds refuse to load a
    model that imports a domain version newer than theirs, even when nothing uses it."""
    used = {node.domain for node in proto.graph.node} | {""}
    keep = [imp for imp in proto.opset_import if imp.domain in used]
    del proto.opset_import[:]
    proto.opset_import.extend(keep)


# onnxruntime's Entropy and Percentile calibrators keep every intermediate tensor of every calibration image in
# memory before they build histograms (7.2 GB for 100 images of the 224x224 ImageNet MobileNetV2 here; 17.7 GB
# and still growing for 300). The sample is capped so that this stays under HISTOGRAM_BUDGET_MB (or a quarter of
# the memory available, whichever is smaller).
HISTOGRAM_BUDGET_MB = 2048


def activation_mb_per_image(onnx_path: Path) -> float:
    """MB of all intermediate float tensors of one image (from shape inference; what a histogram calibrator
    keeps per image)."""
    onnx = require("onnx", "export", "ONNX export")

    model = onnx.shape_inference.infer_shapes(onnx.load(str(onnx_path)))
    total = 0
    for info in list(model.graph.value_info) + list(model.graph.output):
        dims = [d.dim_value if d.HasField("dim_value") else 1 for d in info.type.tensor_type.shape.dim]
        total += int(np.prod(dims[1:] if dims else [0])) * 4
    return total / 2**20


def histogram_sample_cap(onnx_path: Path, budget_mb: float | None = None) -> int:
    """How many images a histogram calibration (entropy, percentile) may use within the memory budget
    (HISTOGRAM_BUDGET_MB, or a quarter of the available memory when that is less)."""
    from edgekit.core.hardware import available_memory_mb

    if budget_mb is None:
        available = available_memory_mb()
        budget_mb = min(HISTOGRAM_BUDGET_MB, available / 4) if available else HISTOGRAM_BUDGET_MB
    # twice the tensors: onnxruntime holds the outputs and its per-tensor lists of them at once
    return max(1, int(budget_mb / max(2 * activation_mb_per_image(onnx_path), 1e-6)))


def quantize_dynamic_onnx(fp32_path: Path, out_path: Path, *, keep_float: tuple[str, ...] = (),
                          spec: ModelSpec) -> dict:
    """onnxruntime's dynamic quantization (``--onnx-int8 dynamic``): the weights of MatMul/Gemm (PyTorch's
    Linear) stored as INT8, activations quantized per batch at run time (DynamicQuantizeLinear, MatMulInteger);
    no calibration data. Convolutions stay FP32, as in PyTorch's dynamic mode: it pays where fully connected
    layers hold the weights (a small CNN's classifier), not in a MobileNet. Returns the recipe."""
    import onnx
    from onnxruntime.quantization import QuantType, quantize_dynamic

    graph = onnx.load(str(fp32_path)).graph
    kept = keep_float_nodes([n.name for n in graph.node], [n.op_type for n in graph.node], keep_float, "ONNX graph")
    quantize_dynamic(str(fp32_path), str(out_path), weight_type=QuantType.QInt8, op_types_to_quantize=["MatMul", "Gemm"],
                     nodes_to_exclude=kept or None)
    proto = onnx.load(str(out_path))
    quantized = sum(node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul") for node in proto.graph.node)
    if not quantized:
        raise BadInputError(f"--onnx-int8 dynamic: {fp32_path.name} has no MatMul or Gemm left to quantize (dynamic "
                            "INT8 takes fully connected layers only); use static INT8 (--onnx-int8 nncf or ort)")
    proto.ir_version = IR_VERSION
    drop_unused_opsets(proto)
    recipe = {"scheme": "onnxruntime-dynamic", "weight_type": "s8 per tensor, MatMul/Gemm only",
              "activations": "u8 per batch, computed at run time", "convolutions": "fp32", "keep_float": kept,
              "quantized_nodes": int(quantized), "calibration": None}
    set_metadata(proto, spec.replace(quantization={**spec.quantization, **recipe}))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out_path))
    return recipe


def quantize_qdq(fp32_path: Path, out_path: Path, work_dir: Path, batches: Iterable[np.ndarray], audit, *,
                 calib_method: str = "minmax", activation_type: str = "auto", reduce_range: bool | None = None,
                 exclude: tuple[str, ...] = (), keep_float: tuple[str, ...] = (), spec: ModelSpec,
                 target: str = "host") -> dict:
    """``quant_pre_process`` then ``quantize_static`` (QDQ, per-channel S8 weights). Returns the recipe,
    including ``audit`` (the CalibrationAudit that ``batches`` fills as ORT consumes them)."""
    onnx = require("onnx", "export", "ONNX export")
    ort = require("onnxruntime", "onnx", "ONNX INT8 quantization")
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    defaults = int8_defaults(target)
    act = defaults["activation_type"] if activation_type == "auto" else activation_type
    reduce = defaults["reduce_range"] if reduce_range is None else reduce_range
    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    prepared = work_dir / "preprocessed.onnx"
    quant_pre_process(str(fp32_path), str(prepared))
    graph = onnx.load(str(prepared)).graph
    known = {n.name for n in graph.node}
    unknown = [n for n in exclude if n not in known]
    if unknown:
        raise BadInputError(f"--exclude: no node named {unknown[0]!r} in the graph (e.g. {sorted(known)[:3]})")
    kept = keep_float_nodes([n.name for n in graph.node], [n.op_type for n in graph.node], keep_float, "ONNX graph",
                            grouped_convolutions(graph))
    exclude = tuple(dict.fromkeys([*exclude, *kept]))
    session = ort.InferenceSession(str(prepared), providers=["CPUExecutionProvider"])
    dim0 = session.get_inputs()[0].shape[0]
    del session
    # Histogram methods get one image per call: onnxruntime cannot merge a short last batch into them.
    fixed = 1 if calib_method != "minmax" else (dim0 if isinstance(dim0, int) else None)
    quantize_static(str(prepared), str(out_path), _BatchReader(batches, fixed),
                    quant_format=QuantFormat.QDQ, per_channel=True, reduce_range=reduce,
                    activation_type=QuantType.QUInt8 if act == "u8" else QuantType.QInt8,
                    weight_type=QuantType.QInt8, calibrate_method=methods[calib_method],
                    nodes_to_exclude=list(exclude) or None)
    proto = onnx.load(str(out_path))
    proto.ir_version = IR_VERSION
    drop_unused_opsets(proto)
    recipe = {"scheme": "onnxruntime-qdq", "activation_type": act, "weight_type": "s8", "per_channel": True,
              "reduce_range": reduce, "calib_method": calib_method, "exclude": list(exclude), "target": target,
              "calibration": audit.to_dict()}
    set_metadata(proto, spec.replace(quantization={**spec.quantization, **recipe}))
    onnx.checker.check_model(proto)
    onnx.save(proto, str(out_path))
    prepared.unlink()
    return recipe


def keep_float_nodes(names: list[str], ops: list[str], keep: tuple[str, ...], what: str,
                     depthwise: list[str] = ()) -> list[str]:
    """Resolve ``--keep-float`` for one graph: ``first`` (the first node of an ``ops`` type, the stem
    convolution), ``last`` (the last one, the classifier), ``depthwise`` (every grouped convolution, named in
    ``depthwise`` by the caller), or node names that must exist in ``names``."""
    typed = [n for n, op in zip(names, ops) if op in ("Conv", "Convolution", "GroupConvolution", "Gemm", "MatMul")]
    chosen = []
    for item in keep:
        if item == "depthwise":
            if not depthwise:
                raise BadInputError(f"--keep-float depthwise: no grouped (depthwise) convolution in the {what}")
            chosen.extend(depthwise)
        elif item in ("first", "last"):
            if not typed:
                raise BadInputError(f"--keep-float {item}: no convolution or matrix multiply in the {what}")
            chosen.append(typed[0] if item == "first" else typed[-1])
        elif item in names:
            chosen.append(item)
        else:
            raise BadInputError(f"--keep-float: no node named {item!r} in the {what} (use first, last, depthwise, or "
                                f"e.g. {', '.join(typed[:3])})")
    return list(dict.fromkeys(chosen))


def grouped_convolutions(graph) -> list[str]:
    """Names of the ONNX Conv nodes with group > 1 (depthwise convolutions)."""
    return [n.name for n in graph.node if n.op_type == "Conv"
            and any(a.name == "group" and a.i > 1 for a in n.attribute)]


def consumers_by_input(graph) -> dict[str, list]:
    """Tensor name -> the nodes that read it, in graph order."""
    consumers: dict[str, list] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    return consumers


def activations_to_u8(model) -> int:
    """Rewrite every signed INT8 activation Q/DQ pair as UINT8 with its zero point shifted by 128: the same
    quantization grid (``(q - zp) * scale`` over 256 levels), bit-identical results when simulated, but
    onnxruntime's x86 kernels fuse only U8 activations (U8S8). NNCF gives signed tensors (a linear bottleneck's
    output, the residual adds) S8; left so, onnxruntime ran 15 of the ImageNet MobileNetV2's 52 convolutions and
    all 10 adds in float between Q/DQ pairs (5.46 ms, no faster than FP32) instead of 3.35 ms fully fused.
    Returns how many pairs changed."""
    from onnx import TensorProto, numpy_helper

    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    constants = {n.output[0]: n for n in graph.node if n.op_type == "Constant"}
    consumers = consumers_by_input(graph)
    types = {vi.name: vi for vi in graph.value_info}
    changed = 0
    for node in list(graph.node):
        if node.op_type != "QuantizeLinear" or node.input[0] in inits or len(node.input) < 3:
            continue
        source = node.input[2]
        if source in inits:
            zero = numpy_helper.to_array(inits[source])
        elif source in constants:
            zero = numpy_helper.to_array(constants[source].attribute[0].t)
        else:
            continue
        if zero.dtype != np.int8:
            continue
        name = f"{source}_u8_{changed}"
        graph.initializer.append(numpy_helper.from_array((zero.astype(np.int16) + 128).astype(np.uint8), name))
        node.input[2] = name
        for user in consumers.get(node.output[0], []):
            if user.op_type == "DequantizeLinear":
                user.input[2] = name
        if node.output[0] in types:
            types[node.output[0]].type.tensor_type.elem_type = TensorProto.UINT8
        changed += 1
    # The S8 zero points nothing reads any more: onnxruntime would warn about each one at every load.
    used = {name for node in graph.node for name in node.input} | {o.name for o in graph.output}
    for tensor in list(graph.initializer):
        if tensor.name not in used and tensor.data_type == TensorProto.INT8 and len(tensor.dims) <= 1:
            graph.initializer.remove(tensor)
    for node in list(graph.node):
        if node.op_type == "Constant" and node.output[0] not in used:
            graph.node.remove(node)
    return changed


def nncf_qdq(fp32_path: Path, out_path: Path, batches: Iterable[np.ndarray], audit, *, num_samples: int,
             bias_correction: str = "full", keep_float: tuple[str, ...] = (), spec: ModelSpec,
             target: str = "host") -> dict:
    """NNCF post-training INT8 of the ONNX model itself (QDQ nodes that ONNX Runtime runs in INT8).

    The default ONNX INT8 route, chosen by measurement on torchvision's ImageNet MobileNetV2 and real photos
    (benchmarks/results/imagenet_int8.txt): onnxruntime's quantize_static agreed with FP32 on 0.667 of the
    held-out photos, NNCF (MinMax ranges + bias correction) on 0.85-0.89, with the same calibration images.
    Full bias correction by default: on the demo model (five seeds, benchmarks/results/demo_margin*.txt) the fast
    one came within 0.10 pp of the accuracy gate on one seed (agreement 0.939 on another)."""
    onnx = require("onnx", "export", "ONNX export")
    nncf = require("nncf", "export", "ONNX INT8 with NNCF")
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)  # see openvino_format.nncf_int8
    model = onnx.load(str(fp32_path))
    keep = keep_float_nodes([n.name for n in model.graph.node], [n.op_type for n in model.graph.node], keep_float,
                            "ONNX graph", grouped_convolutions(model.graph))
    single = [{INPUT_NAME: image[None]} for batch in batches for image in batch]
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, QuantizationParameters

    # Per-tensor activations: NNCF's CPU default quantizes a depthwise convolution's input per channel, which
    # OpenVINO executes in INT8 but onnxruntime cannot (no integer kernel takes a per-channel input scale):
    # the graph then ran in float between Q/DQ pairs, 2.8x slower than FP32 on the ImageNet MobileNetV2.
    # (Signed activations are the other half of the story: see activations_to_u8.)
    # On x86 CPUs without VNNI, onnxruntime's U8S8 kernels can saturate a 16-bit intermediate: NNCF's
    # overflow fix then quantizes every layer's weights to 7 bits (by default only the first layer's).
    from nncf.quantization.advanced_parameters import OverflowFix

    overflow = OverflowFix(int8_defaults(target)["overflow_fix"])
    per_tensor = AdvancedQuantizationParameters(activations_quantization_params=QuantizationParameters(per_channel=False),
                                                overflow_fix=overflow)
    quantized = nncf.quantize(model, nncf.Dataset(single), subset_size=min(num_samples, len(single)),
                              preset=nncf.QuantizationPreset.PERFORMANCE,
                              fast_bias_correction=bias_correction == "fast",
                              ignored_scope=nncf.IgnoredScope(names=keep) if keep else None,
                              advanced_parameters=per_tensor)
    quantized.ir_version = IR_VERSION
    drop_unused_opsets(quantized)
    shifted = activations_to_u8(quantized)
    recipe = {"scheme": "nncf-qdq", "bias_correction": bias_correction, "keep_float": keep,
              "activations": "u8 per tensor", "shifted_to_u8": shifted, "overflow_fix": overflow.value,
              "target": target,
              "calibration": audit.to_dict()}
    set_metadata(quantized, spec.replace(quantization={**spec.quantization, **recipe}))
    onnx.checker.check_model(quantized)
    onnx.save(quantized, str(out_path))
    return recipe
