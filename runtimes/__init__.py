"""Runtimes: one interface over PyTorch, ONNX Runtime and OpenVINO.

    from edgekit.runtimes import load_runtime, RuntimeOptions
    rt = load_runtime("model.onnx", options=RuntimeOptions(threads=2))
    logits = rt.infer(batch)          # batch preprocessed with edgekit.core.spec.preprocess(image, rt.spec)

Backends are imported on first use (see base.RUNTIMES); importing this package imports no ML framework.
"""
from edgekit.runtimes.base import (RUNTIMES, Runtime, RuntimeOptions, detect_format, load_runtime,  # noqa: F401
                                   model_size_bytes, resolve_runtime)
