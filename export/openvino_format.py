"""OpenVINO IR (.xml + .bin) from the exported ONNX files.

FP32 and FP16 come from the FP32 ONNX (``save_model`` compresses weights to FP16 unless told not to, so
FP32 asks explicitly). INT8 has two routes, both fed edgekit's calibration batches:

- ``nncf`` (default): NNCF post-training quantization of the FP32 IR.
- ``qdq``: convert the ONNX Runtime QDQ model; OpenVINO runs its QuantizeLinear/DequantizeLinear pairs as
  INT8, so both runtimes share one set of scales.

Measured on the Fashion-MNIST MobileNetV2 (10,000 test images, benchmarks/results/fashion_mnist_export*):
NNCF -0.07 pp accuracy, top-1 agreement with FP32 0.990, 2.70 MB (0.299x FP32, .xml included); QDQ
+0.01 pp, agreement 0.980, 2.83 MB (0.314x). Equal accuracy within noise, NNCF agrees more often with the
FP32 decisions and is smaller, hence the default.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Iterable

import numpy as np

from edgekit.core.artifacts import METADATA_KEY, RT_INFO_PATH, rt_info_spec
from edgekit.core.errors import require, writing
from edgekit.core.spec import ModelSpec



def _save(model, spec: ModelSpec, xml_path: Path, fp16: bool) -> list[Path]:
    ov = require("openvino", "openvino", "OpenVINO export")
    rt_info = model.get_rt_info()
    # convert_model copies the ONNX metadata_props into rt_info "framework": the FP32 ONNX's spec, stale in
    # an FP16 or INT8 IR. The spec lives under edgekit/spec.
    if "framework" in rt_info.keys() and set(rt_info["framework"].keys()) <= {METADATA_KEY}:
        del rt_info["framework"]
    share_identical_constants(model)
    model.set_rt_info(spec.to_json(), RT_INFO_PATH)
    with writing(xml_path):
        ov.save_model(model, str(xml_path), compress_to_fp16=fp16)
    return [xml_path, xml_path.with_suffix(".bin")]


def share_identical_constants(model) -> int:
    """Point every consumer of a duplicated Constant at one copy; returns how many copies went away.

    NNCF gives each activation FakeQuantize four Const inputs of which two repeat the other two
    (output_low == input_low, output_high == input_high). The serializer stores their bytes once in the .bin
    but writes a layer for each into the .xml: on the Fashion-MNIST MobileNetV2, sharing them takes the INT8
    .xml from 366 KB to 321 KB (157 copies), with bit-identical outputs. The same idea as OpenVINO's own
    ConstantsReduce pass; constants with different runtime info (precision markers) are kept apart.
    """
    import hashlib

    first: dict[tuple, object] = {}
    removed = 0
    for op in model.get_ordered_ops():
        if op.get_type_name() != "Constant":
            continue
        key = (str(op.get_element_type()), tuple(op.get_shape()), tuple(sorted(op.get_rt_info().keys())),
               hashlib.sha256(op.get_data().tobytes()).digest())
        keep = first.setdefault(key, op)
        if keep is not op:
            for target in list(op.output(0).get_target_inputs()):
                target.replace_source_output(keep.output(0))
            removed += 1
    return removed


def from_onnx(onnx_path: Path, spec: ModelSpec, xml_path: Path, fp16: bool = False) -> list[Path]:
    ov = require("openvino", "openvino", "OpenVINO export")
    return _save(ov.convert_model(str(onnx_path)), spec, xml_path, fp16)


BIAS_CORRECTIONS = ("full", "fast")


def nncf_int8(fp32_onnx: Path, spec: ModelSpec, xml_path: Path, batches: Iterable[np.ndarray],
              num_samples: int, bias_correction: str = "full",
              keep_float: tuple[str, ...] = (), max_drop: float | None = None,
              target: str = "host") -> tuple[list[Path], list[str]]:
    """NNCF post-training INT8 on the converted FP32 model, fed edgekit's calibration batches.

    ``bias_correction="full"`` runs NNCF's BiasCorrection (each layer's bias is corrected for the error of
    the already-quantized layers before it) instead of its default FastBiasCorrection (each layer on its
    own, from FP32 inputs). Measured on the demo's MobileNetV2 (embedded Fashion-MNIST, 5 training seeds,
    benchmarks/results/demo_margin*.json): fast agreed with FP32 on 94.4-97.9% of the test images and lost
    up to 0.9 pp of accuracy; full agreed on 98.2-98.3% with deltas of +0.1 to +0.4 pp, for a few more
    seconds of export at 32x32."""
    ov = require("openvino", "openvino", "OpenVINO export")
    nncf = require("nncf", "openvino", "OpenVINO INT8 with NNCF")
    # NNCF probes torch's C++-extension helper, which logs "No CUDA runtime is found" on every CPU-only
    # machine: true, expected and not the user's concern here.
    logging.getLogger("torch.utils.cpp_extension").setLevel(logging.ERROR)
    from edgekit.export.onnx_format import keep_float_nodes

    model = ov.convert_model(str(fp32_onnx))
    ops = model.get_ordered_ops()
    keep = keep_float_nodes([op.get_friendly_name() for op in ops], [op.get_type_name() for op in ops], keep_float,
                            "OpenVINO model",
                            [op.get_friendly_name() for op in ops if op.get_type_name() == "GroupConvolution"])
    single = [image[None] for batch in batches for image in batch]  # the IR has a fixed batch of one
    from nncf.quantization.advanced_parameters import AdvancedQuantizationParameters, OverflowFix

    from edgekit.export.onnx_format import int8_defaults

    options = dict(subset_size=min(num_samples, len(single)), preset=nncf.QuantizationPreset.PERFORMANCE,
                   fast_bias_correction=bias_correction == "fast",
                   ignored_scope=nncf.IgnoredScope(names=keep) if keep else None)
    if target != "host":  # NNCF picks its overflow fix for the machine it runs on unless told
        fix = OverflowFix(int8_defaults(target)["overflow_fix"])
        key = "advanced_quantization_parameters" if max_drop is not None else "advanced_parameters"
        options[key] = AdvancedQuantizationParameters(overflow_fix=fix)
    if max_drop is None:
        quantized = nncf.quantize(model, nncf.Dataset(single), **options)
    else:
        quantized, restored = accuracy_controlled(ov, nncf, model, single, max_drop, options)
        keep = [*keep, *restored]
    return _save(quantized, spec, xml_path, fp16=False), keep


def accuracy_controlled(ov, nncf, model, images: list[np.ndarray], max_drop: float, options: dict):
    """NNCF's quantize_with_accuracy_control with top-1 agreement with FP32 as the metric: NNCF ranks the
    quantized layers by how much each costs and returns them to float, most costly first, until agreement on
    the validation images drops at most ``max_drop``. The validation images are the calibration images (no
    labels needed; the evaluation images stay held out). Returns (model, names of the layers kept in float)."""
    core = ov.Core()
    fp32 = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    items = [(image, int(np.argmax(fp32(image)[0]))) for image in images]

    def agreement(compiled, data) -> tuple[float, list[float]]:
        hits = [float(int(np.argmax(compiled(image)[0])) == label) for image, label in data]
        return (float(np.mean(hits)) if hits else 0.0), hits

    restored_before = {op.get_friendly_name() for op in model.get_ordered_ops()}
    quantized = nncf.quantize_with_accuracy_control(
        model, nncf.Dataset(images), nncf.Dataset(items), agreement, max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE, **options)
    # The layers NNCF returned to float are the Convolution/MatMul ops that no FakeQuantize feeds.
    fed = {target.get_node().get_friendly_name() for op in quantized.get_ordered_ops()
           if op.get_type_name() == "FakeQuantize" for target in op.output(0).get_target_inputs()}
    layers = [op.get_friendly_name() for op in quantized.get_ordered_ops()
              if op.get_type_name() in ("Convolution", "GroupConvolution", "MatMul")
              and op.get_friendly_name() in restored_before]
    return quantized, [name for name in layers if name not in fed]


def read_rt_info_spec(xml_path: str | Path) -> ModelSpec | None:
    ov = require("openvino", "openvino", "reading OpenVINO IR")
    return rt_info_spec(ov.Core().read_model(str(xml_path)))
