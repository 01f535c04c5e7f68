"""One benchmark row, measured in its own process: ``python -m edgekit.benchmarks.worker < job.json``.

A fresh process per row keeps rows honest: peak RSS belongs to one runtime (torch alone costs ~850 MB),
thread settings cannot leak from one framework to the next, and a crash becomes a failed row instead of
ending the run. The result is one JSON object on the last line of stdout.

Protocol (docs/architecture.md "Measuring", MLPerf single stream): import, create the session, time the first
inference, warm up, then time back-to-back inferences until BOTH ``min_runs`` and ``min_seconds`` are
reached. With ``requests`` > 0, a throughput phase follows (MLPerf offline-like): that many inferences
kept in flight for ``min_seconds`` (at least 1 s), reported as images per second. Peak RSS is read before any data set is loaded, so it is the runtime's footprint, not the data's.
"""
from __future__ import annotations

import json
import sys
import time
import traceback

import numpy as np

from edgekit.core.errors import BadInputError, EdgekitError
from edgekit.core.hardware import peak_rss_mb


def timing_input(spec, batch: int, seed: int = 0) -> np.ndarray:
    """A random batch in the model's own input layout and dtype (CNN latency does not depend on pixels)."""
    shape = spec.input_shape(batch)
    rng = np.random.default_rng(seed)
    if spec.dtype == "uint8":
        return rng.integers(0, 256, shape, dtype=np.uint8)
    return rng.standard_normal(shape).astype(np.float32)


def latency_stats(seconds: list[float], batch: int) -> dict:
    ms = np.asarray(seconds) * 1e3
    return {"runs": int(len(ms)), "p50_ms": float(np.percentile(ms, 50)), "p90_ms": float(np.percentile(ms, 90)),
            "p99_ms": float(np.percentile(ms, 99)), "mean_ms": float(ms.mean()), "min_ms": float(ms.min()),
            "fps": float(batch * 1e3 / ms.mean())}


def evaluation_indices(data: str, spec, images: int, seed: int):
    """(table, test indices) of an image data set, split by the model's own recipe."""
    from edgekit.core.data import load_split, test_subset

    # The model's own split recipe, recorded by `edgekit train` (refused when the data is not what it was
    # trained on); a model without one gets the training defaults (seed 0, 10 % val, 20 % test). Data
    # sets with their own test split (Fashion-MNIST's t10k files, a test/ folder) use that.
    table = load_split(data, **spec.split)
    table.relabel(spec.labels, data)
    return table, test_subset(table, images, seed)


def evaluation_set(data: str, spec, images: int, seed: int):
    """(inputs generator factory, labels) for ``data``: an image data set (its test split) or an .npz
    file with preprocessed inputs ``x`` and optional labels ``y``."""
    from pathlib import Path

    if str(data).endswith(".npz"):
        if not Path(data).is_file():
            raise BadInputError(f"data not found: {data}")
        arrays = np.load(data)
        if "x" not in arrays:
            raise BadInputError(f"{data} has no array named 'x' (preprocessed inputs)")
        x = arrays["x"][: images or None]
        labels = arrays["y"][: images or None] if "y" in arrays else None
        return (lambda start, stop: x[start:stop]), len(x), labels
    table, indices = evaluation_indices(data, spec, images, seed)

    def inputs(start: int, stop: int) -> np.ndarray:
        return table.inputs(indices[start:stop], spec)

    return inputs, len(indices), (table.labels[indices] if table.labelled else None)


def run_job(job: dict) -> dict:
    from pathlib import Path

    from edgekit.runtimes.base import RuntimeOptions, runtime_class
    from edgekit.core.metrics import predictions

    options = RuntimeOptions(**{**job["options"], "providers": tuple(job["options"]["providers"])})
    result: dict = {"status": "ok"}
    start = time.perf_counter()
    cls = runtime_class(job["runtime"])
    runtime = cls()
    result["import_s"] = time.perf_counter() - start  # the backend module (and its framework) imported lazily
    start = time.perf_counter()
    runtime.load(Path(job["model"]), options)
    result["session_s"] = time.perf_counter() - start
    spec, batch = runtime.spec, options.batch
    x = timing_input(spec, batch)
    start = time.perf_counter()
    runtime.infer(x)
    result["first_ms"] = (time.perf_counter() - start) * 1e3
    for _ in range(job["warmup"]):
        runtime.infer(x)
    times: list[float] = []
    begin = time.perf_counter()
    while len(times) < job["min_runs"] or time.perf_counter() - begin < job["min_seconds"]:
        t0 = time.perf_counter()
        runtime.infer(x)
        times.append(time.perf_counter() - t0)
    result.update(latency_stats(times, batch))
    if job.get("requests"):  # throughput: N requests in flight (OpenVINO async queue, threads elsewhere)
        done, elapsed = runtime.throughput(x, job["requests"], max(job["min_seconds"], 1.0))
        result["requests"] = job["requests"]
        result["throughput_fps"] = done * batch / elapsed
    result["peak_rss_mb"] = peak_rss_mb()
    result["describe"] = runtime.describe()
    fixed = result["describe"].get("fixed_batch")
    if isinstance(fixed, int) and fixed < batch:  # a graph made for batch 1: the "batch" is several calls
        result["chunked_by"] = fixed
    result["precision"] = spec.precision
    if spec.task == "clip":  # latency is per clip; what a frame costs is the clip's share
        result["clip_frames"] = spec.clip_frames
        result["p50_ms_per_frame"] = result["p50_ms"] / (batch * spec.clip_frames)
    result["torch_imported"] = "torch" in sys.modules and sys.modules["torch"] is not None
    if job.get("data") and job.get("evaluate"):
        inputs, count, labels = evaluation_set(job["data"], spec, job.get("images", 0), job.get("seed", 0))
        step = max(batch, 1)
        logits = np.concatenate([runtime.infer(inputs(i, min(i + step, count))) for i in range(0, count, step)])
        if not np.isfinite(logits).all():
            raise EdgekitError(f"{job['model']} gives NaN or infinite outputs on the evaluation images")
        preds = predictions(logits, spec.binary)
        result["predictions"] = preds.tolist()
        if labels is not None:
            result["accuracy"] = float((preds == labels).mean())
        result["eval_images"] = int(count)
    runtime.close()
    return result


def main() -> None:
    job = json.loads(sys.stdin.read())
    try:
        result = run_job(job)
    except EdgekitError as exc:
        result = {"status": "failed", "reason": str(exc)}
    except Exception as exc:  # noqa: BLE001  a backend's own error: report it as this row's failure, in one line
        last = traceback.format_exception_only(type(exc), exc)[-1].strip().splitlines()[0]
        result = {"status": "failed", "reason": f"{type(exc).__name__} in {job['runtime']}: {last[:300]}"}
    sys.stdout.write("\n" + json.dumps(result) + "\n")


if __name__ == "__main__":
    main()
