"""Per-layer INT8 error of a QDQ ONNX model against its FP32 model (``--debug-layers FILE``).

Works on any QDQ graph (NNCF's or onnxruntime's naming): every QuantizeLinear -> DequantizeLinear pair
replaces one float tensor X. For activations it runs both models on the same images with X (and the pair's
output) added as graph outputs and reports, per quantized tensor:

- ``qdq_sqnr_db``: signal-to-quantization-noise ratio of the pair alone (X inside the INT8 model against its
  dequantized copy): how much this one quantizer loses;
- ``accumulated_sqnr_db``: X in the INT8 model against X in the FP32 model: the error gathered up to here.

Weights (int8 initializers feeding a DequantizeLinear) get ``qdq_sqnr_db`` of the dequantized weight
against the FP32 weight of the same consumer node. Higher is better; rows are written in graph order, so
the layer where ``accumulated_sqnr_db`` drops is the one to try with ``--keep-float``.
(onnxruntime's ``qdq_loss_debug`` does the same for its own tensor naming only.)
"""
from __future__ import annotations

import csv
from pathlib import Path
from typing import Iterable

import numpy as np

from edgekit.core.errors import require

FIELDS = ("index", "kind", "tensor", "consumer", "qdq_sqnr_db", "accumulated_sqnr_db")


def sqnr_db(reference: np.ndarray, noisy: np.ndarray) -> float:
    """10 log10(|ref|^2 / |ref - noisy|^2); inf when identical."""
    reference = reference.astype(np.float64).ravel()
    noise = float(np.sum((reference - noisy.astype(np.float64).ravel()) ** 2))
    signal = float(np.sum(reference ** 2))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


def _pairs(model) -> list[tuple[str, str, str]]:
    """(float tensor, dequantized tensor, consumer node) for every activation Q->DQ pair."""
    from edgekit.export.onnx_format import consumers_by_input

    inits = {t.name: t for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    consumers = consumers_by_input(model.graph)
    pairs = []
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] in inits:
            continue
        quant = producers.get(node.input[0])
        if quant is None or quant.op_type != "QuantizeLinear" or quant.input[0] in inits:
            continue
        users = consumers.get(node.output[0], [])
        pairs.append((quant.input[0], node.output[0], users[0].name if users else ""))
    return pairs


def _weight_rows(qdq_model, float_model) -> list[dict]:
    from onnx import numpy_helper

    from edgekit.export.onnx_format import consumers_by_input

    pairs_inits = {t.name: t for t in qdq_model.graph.initializer}
    float_nodes = {node.name: node for node in float_model.graph.node}
    float_inits = {t.name: numpy_helper.to_array(t) for t in float_model.graph.initializer}
    consumers = consumers_by_input(qdq_model.graph)
    rows = []
    for node in qdq_model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in pairs_inits:
            continue
        users = consumers.get(node.output[0], [])
        if not users or users[0].name not in float_nodes:
            continue
        consumer = users[0]
        slot = list(consumer.input).index(node.output[0])
        reference_name = float_nodes[consumer.name].input[slot] if slot < len(float_nodes[consumer.name].input) else ""
        if reference_name not in float_inits:
            continue
        q = numpy_helper.to_array(pairs_inits[node.input[0]]).astype(np.float64)
        scale = numpy_helper.to_array(pairs_inits[node.input[1]]).astype(np.float64)
        zero = (numpy_helper.to_array(pairs_inits[node.input[2]]).astype(np.float64)
                if len(node.input) > 2 and node.input[2] in pairs_inits else np.zeros_like(scale))
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        if scale.ndim == 1 and scale.size > 1:
            shape = [1] * q.ndim
            shape[axis] = scale.size
            scale, zero = scale.reshape(shape), zero.reshape(shape)
        dequantized = (q - zero) * scale
        rows.append({"kind": "weight", "tensor": reference_name, "consumer": consumer.name,
                     "qdq_sqnr_db": sqnr_db(float_inits[reference_name], dequantized), "accumulated_sqnr_db": None})
    return rows


def _with_outputs(model, names: list[str]):
    import onnx

    extended = onnx.ModelProto()
    extended.CopyFrom(model)
    existing = {o.name for o in extended.graph.output}
    for name in names:
        if name not in existing:
            extended.graph.output.append(onnx.ValueInfoProto(name=name))
            existing.add(name)
    return extended


def layer_errors(float_path: Path, qdq_path: Path, images: Iterable[np.ndarray], input_name: str) -> list[dict]:
    """One row per quantized tensor of ``qdq_path`` (see the module docstring), over ``images`` (N,C,H,W each)."""
    onnx = require("onnx", "export", "INT8 layer debugging")
    ort = require("onnxruntime", "onnx", "INT8 layer debugging")
    qdq_model, float_model = onnx.load(str(qdq_path)), onnx.load(str(float_path))
    pairs = _pairs(qdq_model)
    float_tensors = {n for node in float_model.graph.node for n in node.output} | {i.name for i in float_model.graph.input}
    wanted_q = [name for pair in pairs for name in pair[:2]]
    wanted_f = sorted({x for x, _, _ in pairs if x in float_tensors})
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # keep every tensor as named
    q_session = ort.InferenceSession(_with_outputs(qdq_model, wanted_q).SerializeToString(), options,
                                     providers=["CPUExecutionProvider"])
    f_session = ort.InferenceSession(_with_outputs(float_model, wanted_f).SerializeToString(), options,
                                     providers=["CPUExecutionProvider"])
    q_names = [o.name for o in q_session.get_outputs()]
    f_names = [o.name for o in f_session.get_outputs()]

    def energy(a: np.ndarray, b: np.ndarray | None = None) -> float:
        a = a.astype(np.float64)
        return float(np.sum(a ** 2 if b is None else (a - b.astype(np.float64)) ** 2))

    signal: dict[str, float] = {}  # energy of X in the FP32 model (the INT8 model's float X where FP32 lacks it)
    own: dict[str, float] = {}  # this quantizer's noise: X against its dequantized copy
    accumulated: dict[str, float] = {}  # X in the INT8 model against X in the FP32 model
    for batch in images:
        q_out = dict(zip(q_names, q_session.run(q_names, {input_name: batch})))
        f_out = dict(zip(f_names, f_session.run(f_names, {input_name: batch})))
        for x, dq, _ in pairs:
            signal[x] = signal.get(x, 0.0) + energy(f_out.get(x, q_out[x]))
            own[x] = own.get(x, 0.0) + energy(q_out[x], q_out[dq])
            if x in f_out:
                accumulated[x] = accumulated.get(x, 0.0) + energy(f_out[x], q_out[x])

    def db(power: float, noise: float) -> float:
        return float("inf") if noise == 0 else 10.0 * np.log10(max(power, 1e-30) / noise)

    rows = [{"kind": "activation", "tensor": x, "consumer": consumer, "qdq_sqnr_db": db(signal[x], own[x]),
             "accumulated_sqnr_db": db(signal[x], accumulated[x]) if x in accumulated else None}
            for x, _, consumer in pairs]
    rows += _weight_rows(qdq_model, float_model)
    order = {node.name: i for i, node in enumerate(qdq_model.graph.node)}
    rows.sort(key=lambda r: (order.get(r["consumer"], len(order)), r["kind"]))
    for i, row in enumerate(rows):
        row["index"] = i
    return rows


def write_rows(rows: list[dict], path: Path) -> None:
    """CSV with FIELDS; decibels rounded to 0.01, empty where not measured; written whole or not at all."""
    import io

    from edgekit.core import jsonio

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS)
    writer.writeheader()
    for row in rows:
        writer.writerow({key: ("" if row[key] is None else round(row[key], 2) if isinstance(row[key], float)
                               else row[key]) for key in FIELDS})
    jsonio.write_text(path, text.getvalue())



def bypass_sensitivity(float_path: Path, qdq_path: Path, images: list[np.ndarray], input_name: str) -> list[dict]:
    """For every activation quantizer of ``qdq_path``: the SQNR (dB) of the model's outputs against FP32 when
    that one quantizer is bypassed (its Q->DQ pair removed), next to the SQNR with every quantizer on. The
    largest gains name the tensors whose consumers ``--keep-float`` should keep in float."""
    onnx = require("onnx", "export", "INT8 layer debugging")
    ort = require("onnxruntime", "onnx", "INT8 layer debugging")
    qdq_model = onnx.load(str(qdq_path))
    pairs = _pairs(qdq_model)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL

    def outputs(model_bytes: bytes) -> np.ndarray:
        session = ort.InferenceSession(model_bytes, options, providers=["CPUExecutionProvider"])
        return np.concatenate([session.run(None, {input_name: image})[0] for image in images])

    reference = outputs(onnx.load(str(float_path)).SerializeToString())
    baseline = sqnr_db(reference, outputs(qdq_model.SerializeToString()))
    rows = []
    for x, dq, consumer in pairs:
        bypassed = onnx.ModelProto()
        bypassed.CopyFrom(qdq_model)
        for node in bypassed.graph.node:
            for i, name in enumerate(node.input):
                if name == dq:
                    node.input[i] = x
        rows.append({"tensor": x, "consumer": consumer, "baseline_db": baseline,
                     "bypassed_db": sqnr_db(reference, outputs(bypassed.SerializeToString()))})
    return sorted(rows, key=lambda r: r["baseline_db"] - r["bypassed_db"])
