"""How far apart two correct FP32 implementations of the same network are: the floor under any
"ONNX FP32 matches PyTorch" tolerance.

Runs the Fashion-MNIST MobileNetV2 on the full 10k test set in: PyTorch FP32 (oneDNN convolutions, the
default), PyTorch FP32 without oneDNN, PyTorch float64 (the "true" value), and onnxruntime on the exported
FP32 ONNX at three graph-optimisation levels; prints the max |logit difference| of every pair that matters.
Usage: python benchmarks/scripts/fp32_noise_floor.py [CHECKPOINT] [ONNX] [DATA] > benchmarks/results/fp32_noise_floor.txt
"""
from __future__ import annotations

import copy
import json
import sys

import numpy as np


def main() -> None:
    import onnxruntime as ort
    import torch

    from edgekit.models.checkpoint import load_checkpoint
    from edgekit.core.data import test_subset
    from edgekit.models.loading import checkpoint_data, load_model

    defaults = ["runs/fashion_mnist/model.pt", "runs/fashion_mnist/export/model.onnx", "/usr/share/datasets/fashion-mnist"]
    ckpt_path, onnx_path, data = sys.argv[1:4] + defaults[len(sys.argv[1:4]):]
    ckpt = load_checkpoint(ckpt_path)
    table = checkpoint_data(ckpt, data)
    x = table.inputs(test_subset(table, 0), ckpt.spec).astype(np.float32)
    model = load_model(ckpt).eval()

    def run_torch(m, dtype=torch.float32):
        with torch.no_grad():
            return torch.cat([m(torch.from_numpy(x[i:i + 500]).to(dtype)) for i in range(0, len(x), 500)]).double().numpy()

    out = {"pytorch fp32 (oneDNN)": run_torch(model), "pytorch float64": run_torch(copy.deepcopy(model).double(), torch.float64)}
    torch.backends.mkldnn.enabled = False
    out["pytorch fp32 (no oneDNN)"] = run_torch(model)
    for level in ("ORT_DISABLE_ALL", "ORT_ENABLE_BASIC", "ORT_ENABLE_ALL"):
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        session = ort.InferenceSession(onnx_path, options, providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        out[f"onnxruntime {level}"] = np.concatenate([session.run(None, {name: x[i:i + 1]})[0] for i in range(len(x))]).astype(np.float64)
    pairs = [("pytorch fp32 (oneDNN)", "pytorch float64"), ("pytorch fp32 (no oneDNN)", "pytorch float64"),
             ("pytorch fp32 (oneDNN)", "pytorch fp32 (no oneDNN)")]
    pairs += [(k, ref) for k in out if k.startswith("onnxruntime") for ref in ("pytorch fp32 (oneDNN)", "pytorch float64")]
    rows = [{"a": a, "b": b, "max_abs": float(np.abs(out[a] - out[b]).max()), "mean_abs": float(np.abs(out[a] - out[b]).mean())}
            for a, b in pairs]
    print(f"{len(x)} test images; max |logit| {np.abs(out['pytorch float64']).max():.1f}")
    print(f"{'A':<30}{'B':<26}{'max |A-B|':>11}{'mean |A-B|':>12}")
    for r in rows:
        print(f"{r['a']:<30}{r['b']:<26}{r['max_abs']:>11.2e}{r['mean_abs']:>12.2e}")
    with open("benchmarks/results/fp32_noise_floor.json", "w") as fh:
        json.dump(rows, fh, indent=2)


if __name__ == "__main__":
    main()
