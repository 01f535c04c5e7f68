"""ONNX Runtime backend: works with nothing but ``edgekit[onnx]`` installed (no torch, no onnx package)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.core.errors import BadInputError, require
from edgekit.core.artifacts import METADATA_KEY  # where export writes the spec in metadata_props
from edgekit.runtimes.base import (RuntimeOptions, artifact_spec, check_graph, check_input, concurrent_throughput,
                                   run_in_chunks)
from edgekit.core.spec import ModelSpec


def _load_errors() -> tuple[type, ...]:
    """onnxruntime's load failures are its own exception classes, not subclasses of RuntimeError."""
    from onnxruntime.capi import onnxruntime_pybind11_state as state

    names = ("Fail", "InvalidProtobuf", "InvalidGraph", "InvalidArgument", "NoSuchFile", "NotImplemented",
             "RuntimeException")
    return tuple(getattr(state, n) for n in names if hasattr(state, n))


class OnnxRuntime:
    name = "onnxruntime"

    def load(self, path: Path, options: RuntimeOptions) -> None:
        ort = require("onnxruntime", "onnx", "the onnxruntime runtime")
        available = ort.get_available_providers()
        missing = [p for p in options.providers if p not in available]
        if missing:
            raise BadInputError(f"onnxruntime provider {missing[0]} is not available here "
                                f"(available: {', '.join(available)})")
        session_options = ort.SessionOptions()
        if options.threads:
            session_options.intra_op_num_threads = options.threads
        # One model, one stream of frames: parallelism comes from inside each operator.
        session_options.inter_op_num_threads = 1
        session_options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        levels = {"disable": "ORT_DISABLE_ALL", "basic": "ORT_ENABLE_BASIC", "extended": "ORT_ENABLE_EXTENDED",
                  "all": "ORT_ENABLE_ALL"}
        session_options.graph_optimization_level = getattr(ort.GraphOptimizationLevel,
                                                           levels[options.graph_optimization])
        session_options.log_severity_level = 3  # errors only; warnings about unused initialisers are noise
        try:
            self.session = ort.InferenceSession(str(path), session_options, providers=list(options.providers))
        except _load_errors() as exc:
            raise BadInputError(f"onnxruntime cannot load {path}: {str(exc).splitlines()[0][:300]}") from exc
        self.path, self.options, self.version = path, options, ort.__version__
        metadata = self.session.get_modelmeta().custom_metadata_map
        self.spec: ModelSpec = artifact_spec(
            path, lambda: ModelSpec.from_json(metadata[METADATA_KEY]) if METADATA_KEY in metadata else None)
        first = self.session.get_inputs()[0]
        check_graph(path, self.spec, first.shape, self.session.get_outputs()[0].shape)
        self.input_name = first.name
        self.fixed_batch = first.shape[0] if isinstance(first.shape[0], int) else None

    def infer(self, batch: np.ndarray) -> np.ndarray:
        check_input(batch, self.spec)
        run = lambda x: self.session.run(None, {self.input_name: x})[0]  # noqa: E731
        return run_in_chunks(batch, self.fixed_batch, run) if self.fixed_batch else run(batch)

    def throughput(self, batch: np.ndarray, requests: int, seconds: float) -> tuple[int, float]:
        # InferenceSession.run is thread-safe and releases the GIL: N threads = N requests in flight, each
        # with the session's intra-op threads (so N x threads cores are asked for).
        return concurrent_throughput(self.infer, batch, requests, seconds)

    def describe(self) -> dict[str, Any]:
        return {"runtime": self.name, "version": self.version, "format": "onnx", "precision": self.spec.precision,
                "threads": self.options.threads, "providers": self.session.get_providers(),
                "graph_optimization": self.options.graph_optimization, "fixed_batch": self.fixed_batch}

    def close(self) -> None:
        self.session = None
