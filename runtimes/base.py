"""The runtime interface, the registry of backends and format detection.

A runtime turns a model file into ``infer(batch) -> logits``. Backends register as ``name ->
"module:Class"`` strings and are imported only when asked for, so importing this module (or the CLI)
never pulls in torch, onnxruntime or openvino: a Raspberry Pi with only onnxruntime installed runs the
onnxruntime backend without torch ever being imported.
"""
from __future__ import annotations

import importlib
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from edgekit.core import checks
from edgekit.core.errors import BadInputError, UnknownNameError
from edgekit.core.spec import ModelSpec

# name -> "module:Class"; the module is imported on first use.
RUNTIMES = {
    "pytorch": "edgekit.runtimes.pytorch_backend:PyTorchRuntime",
    "onnxruntime": "edgekit.runtimes.onnxruntime_backend:OnnxRuntime",
    "openvino": "edgekit.runtimes.openvino_backend:OpenVINORuntime",
}
ALIASES = {"torch": "pytorch", "pt": "pytorch", "ort": "onnxruntime", "onnx": "onnxruntime", "ov": "openvino"}
# Which runtimes can open which format; the first one is the default for that format.
FORMAT_RUNTIMES = {"pytorch": ("pytorch",), "onnx": ("onnxruntime", "openvino"), "openvino": ("openvino",)}
GRAPH_OPTIMIZATIONS = ("disable", "basic", "extended", "all")
PERFORMANCE_HINTS = ("LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT")


@dataclass(frozen=True)
class RuntimeOptions:
    """Settings every backend understands (``threads``) plus the backend-specific knobs.

    ``threads`` is the number of threads used *inside* one inference (intra-op); 0 means the backend's
    own default. Benchmarks always set it, and to the same value for every runtime.
    """

    threads: int = 0
    batch: int = 1
    # OpenVINO
    device: str = "CPU"
    performance_hint: str = "LATENCY"
    # f32 keeps "FP32" honest on CPUs with bf16/AMX units, where OpenVINO would otherwise pick bf16.
    inference_precision: str = "f32"
    # ONNX Runtime
    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    graph_optimization: str = "all"

    def __post_init__(self) -> None:
        checks.threads("--threads", self.threads)
        checks.within("--batch", self.batch, 1, 4096)
        if self.graph_optimization not in GRAPH_OPTIMIZATIONS:
            raise UnknownNameError("graph optimization level", self.graph_optimization, GRAPH_OPTIMIZATIONS)
        if self.performance_hint not in PERFORMANCE_HINTS:
            raise UnknownNameError("OpenVINO performance hint", self.performance_hint, PERFORMANCE_HINTS)

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["providers"] = list(self.providers)
        return data


@runtime_checkable
class Runtime(Protocol):
    """What every backend provides. ``spec`` is the model's spec (preprocessing, labels, precision)."""

    name: str
    spec: ModelSpec

    def load(self, path: Path, options: RuntimeOptions) -> None: ...

    def infer(self, batch: np.ndarray) -> np.ndarray: ...

    def describe(self) -> dict[str, Any]: ...

    def throughput(self, batch: np.ndarray, requests: int, seconds: float) -> tuple[int, float]:
        """(completed inferences, elapsed s) with ``requests`` inferences of ``batch`` in flight at once."""
        ...

    def close(self) -> None: ...


def detect_format(path: str | Path) -> str:
    """"pytorch", "onnx" or "openvino", from the file's suffix *and* its first bytes."""
    path = Path(path)
    if not path.exists():
        raise BadInputError(f"model not found: {path}")
    if path.is_dir():
        raise BadInputError(f"{path} is a folder; pass the model file (.pt, .onnx or .xml)")
    suffix = path.suffix.lower()
    with open(path, "rb") as fh:
        head = fh.read(64)
    if not head:
        raise BadInputError(f"{path} is empty")
    if suffix in (".pt", ".pth"):
        if not head.startswith(b"PK"):  # torch.save writes a zip archive
            raise BadInputError(f"{path} is not a torch checkpoint (not a zip archive)")
        return "pytorch"
    if suffix == ".xml":
        if not head.lstrip().startswith(b"<"):
            raise BadInputError(f"{path} is not an OpenVINO IR (not XML)")
        bin_path = path.with_suffix(".bin")
        if not bin_path.is_file():
            raise BadInputError(f"{path}: the weights file {bin_path.name} is missing next to it")
        return "openvino"
    if suffix == ".onnx":
        # An ONNX file is a protobuf whose first field is ir_version (field 1, varint: byte 0x08).
        if head[0] != 0x08:
            raise BadInputError(f"{path} is not an ONNX model (bad header)")
        return "onnx"
    raise BadInputError(f"{path}: not a model file (expected .pt, .onnx or .xml)")


def resolve_runtime(name: str) -> str:
    name = ALIASES.get(name.lower(), name.lower())
    if name not in RUNTIMES:
        raise UnknownNameError("runtime", name, RUNTIMES)
    return name


def runtime_class(name: str) -> type:
    module_name, _, class_name = RUNTIMES[resolve_runtime(name)].partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def default_runtime(path: str | Path) -> str:
    return FORMAT_RUNTIMES[detect_format(path)][0]


def check_pair(path: str | Path, runtime: str) -> str:
    """The canonical runtime name, or a BadInputError when that runtime cannot open the file."""
    runtime = resolve_runtime(runtime)
    fmt = detect_format(path)
    if runtime not in FORMAT_RUNTIMES[fmt]:
        raise BadInputError(f"{runtime} cannot run {fmt} models ({Path(path).name}); "
                            f"use {' or '.join(FORMAT_RUNTIMES[fmt])}")
    return runtime


def load_runtime(path: str | Path, runtime: str | None = None, options: RuntimeOptions | None = None) -> Runtime:
    """Open ``path`` with ``runtime`` (default: the natural one for its format)."""
    name = check_pair(path, runtime) if runtime else default_runtime(path)
    instance = runtime_class(name)()
    instance.load(Path(path), options or RuntimeOptions())
    return instance


# The spec fields that decide how inputs are prepared and outputs read: a sidecar and the copy inside the
# file must agree on them (the quantization notes may differ: a sidecar records more of the recipe).
DECISIVE_FIELDS = ("labels", "input_size", "channels", "color", "layout", "dtype", "scale", "mean", "std", "binary",
                   "resize", "resize_to", "task")


def artifact_spec(path: Path, embedded=None) -> ModelSpec:
    """The spec of an exported model: its sidecar, else ``embedded()`` (the copy inside the file). A
    sidecar that contradicts the embedded copy (a stale file left next to a new model) is refused."""
    from edgekit.core.artifacts import read_sidecar, sidecar_path, unverified_stage

    if unverified_stage(path):
        raise BadInputError(f"{path} is in an export's staging folder: it was never verified (the export was "
                            "interrupted); run `edgekit export` again")
    inside = embedded() if embedded else None
    if sidecar_path(path).is_file():
        spec = read_sidecar(path)[0]
        differ = [f for f in DECISIVE_FIELDS if inside is not None and getattr(spec, f) != getattr(inside, f)]
        if differ:
            raise BadInputError(f"{sidecar_path(path).name} and the spec inside {path.name} disagree on "
                                f"{', '.join(differ)} (e.g. {differ[0]}: {getattr(spec, differ[0])!r} vs "
                                f"{getattr(inside, differ[0])!r}); remove the stale sidecar or export again")
        return spec
    if inside is None:
        raise BadInputError(f"{path} carries no edgekit spec (no {sidecar_path(path).name}, nothing in the file); "
                            f"export it with `edgekit export`")
    return inside


def check_graph(path: Path, spec: ModelSpec, input_shape, output_shape) -> None:
    """The spec against the graph, when the model is loaded: its input size, layout and channels and its
    number of outputs must agree, or the model is refused with one line before any frame reaches it.
    Shapes are lists of ints, with None (or a name) for dynamic dimensions."""
    expected = spec.input_shape()
    if len(input_shape) != len(expected) or any(isinstance(g, int) and g != e for g, e in zip(input_shape[1:], expected[1:])):
        raise BadInputError(f"{path.name}: the graph takes {list(input_shape)} but its spec describes "
                            f"{list(expected)} ({spec.layout}, {spec.channels} channel(s), "
                            f"{spec.input_size[0]}x{spec.input_size[1]}); the spec does not fit this model")
    outputs = output_shape[-1] if len(output_shape) else None
    if isinstance(outputs, int) and outputs != spec.num_outputs:
        raise BadInputError(f"{path.name}: the graph gives {outputs} outputs but its spec has {len(spec.labels)} "
                            f"labels{' (binary: expects 1 logit)' if spec.binary else ''}; the spec does not fit this "
                            "model")


def check_input(batch: np.ndarray, spec: ModelSpec) -> None:
    """A wrong shape or dtype becomes one readable line instead of a backend stack trace."""
    chw = spec.input_shape()[1:]
    if batch.ndim != len(chw) + 1 or tuple(batch.shape[1:]) != chw:
        raise BadInputError(f"input shape {tuple(batch.shape)} does not fit the model: expected (N, {', '.join(map(str, chw))})")
    expected = np.dtype(spec.dtype)
    if batch.dtype != expected:
        raise BadInputError(f"input dtype {batch.dtype} does not fit the model: expected {expected}")


def run_in_chunks(batch: np.ndarray, size: int, run) -> np.ndarray:
    """Feed a model compiled for a fixed batch ``size`` any number of images (the last chunk is padded
    with zeros and the padding's outputs dropped)."""
    if len(batch) == size:
        return run(batch)
    outputs = []
    for start in range(0, len(batch), size):
        chunk = batch[start:start + size]
        if len(chunk) < size:
            pad = np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)
            outputs.append(run(np.concatenate([chunk, pad]))[:len(chunk)])
        else:
            outputs.append(run(chunk))
    return np.concatenate(outputs)


def model_size_bytes(path: str | Path) -> int:
    """Bytes on disk of everything the model needs (an OpenVINO IR is its .xml plus its .bin)."""
    path = Path(path)
    size = path.stat().st_size
    if path.suffix.lower() == ".xml" and path.with_suffix(".bin").is_file():
        size += path.with_suffix(".bin").stat().st_size
    return size


def concurrent_throughput(infer, x: np.ndarray, requests: int, seconds: float) -> tuple[int, float]:
    """(completed calls, elapsed s) with ``requests`` Python threads calling ``infer(x)`` back to back for
    ``seconds``: the throughput of a runtime whose inference call releases the GIL and may be called from
    several threads at once (onnxruntime's ``InferenceSession.run``, torch modules). Each thread stops at
    the deadline, then all are joined before the count is read."""
    import threading

    deadline = time.perf_counter() + seconds
    counts = [0] * requests
    errors: list[BaseException] = []

    def loop(slot: int) -> None:
        try:
            while time.perf_counter() < deadline:
                infer(x)
                counts[slot] += 1
        except BaseException as exc:  # noqa: BLE001  re-raised in the caller's thread below
            errors.append(exc)

    threads = [threading.Thread(target=loop, args=(i,), daemon=True) for i in range(requests)]
    start = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - start
    if errors:
        raise errors[0]
    return sum(counts), elapsed
