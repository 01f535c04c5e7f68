"""`edgekit demo`: the whole flow available so far, on data that ships inside the package.

Trains MobileNetV2 from scratch on the embedded Fashion-MNIST subset (3,000 train / 1,000 test images,
MIT licence, see edgekit/data/fashion-mnist-mini/README.md), quantizes it to INT8 with calibration on its
training split, prints FP32 vs INT8, then exports ONNX (FP32, QDQ INT8) and, when OpenVINO is installed,
OpenVINO IR, each verified against PyTorch on the 1,000 test images, and benchmarks every model on every
runtime in one table (`edgekit bench`). No network, about 2.5 minutes on 2 cores.
"""
from __future__ import annotations

import time
from importlib import resources
from pathlib import Path

from edgekit.training.quantize import QuantizeConfig, format_comparison, quantize_checkpoint
from edgekit.training.trainer import TrainConfig, train


def embedded_dataset() -> Path:
    return Path(str(resources.files("edgekit") / "data" / "fashion-mnist-mini"))


def run_demo(out: str = "runs/demo", epochs: int = 12, threads: int = 0) -> str:
    start = time.perf_counter()
    data = str(embedded_dataset())
    trained = train(TrainConfig(data=data, model="mobilenet_v2", weights="none", input_size=32, epochs=epochs,
                                batch_size=64, hflip=True, out=out, threads=threads))
    compared = quantize_checkpoint(QuantizeConfig(checkpoint=str(trained["checkpoint"]), data=data,
                                                  calib_batches=16, batch_size=32, threads=threads))
    export_lines = _export(out, trained["checkpoint"], data)
    bench_lines = _bench(out, data, threads)
    return "\n".join([
        "== edgekit demo: MobileNetV2 on the embedded Fashion-MNIST subset (3,000 train / 1,000 test) ==",
        "", "-- FP32 test metrics --", trained["table"],
        "", "-- PyTorch static INT8 vs FP32 (same 1,000 test images) --", format_comparison(compared),
        "", "-- exported artifacts vs PyTorch FP32 --", *export_lines,
        "", "-- edgekit bench: every model on its runtime (batch 1, short runs: see README for the protocol) --",
        *bench_lines,
        "", f"artifacts in {out}/: model.pt, model_int8.pt, metrics.json, curves.png, model*.onnx, model*.xml, bench.json",
        f"total time {time.perf_counter() - start:.0f} s. A small subset and few epochs: see README for the "
        "full Fashion-MNIST numbers.",
    ])


def _export(out: str, checkpoint, data: str) -> list[str]:
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        return [f"export not run: {', '.join(missing)} missing (pip install \"edgekit[all]\")"]
    from edgekit.export.core import ExportConfig, export

    formats = ("onnx", "openvino") if importlib.util.find_spec("openvino") else ("onnx",)
    result = export(ExportConfig(checkpoint=str(checkpoint), formats=formats, out=out, int8=True, data=data,
                                 calib_size=512, verify_images=0))
    return [result.verify_table, "", *result.lines]


def _bench(out: str, data: str, threads: int) -> list[str]:
    import os

    from edgekit.benchmarks.harness import BenchConfig, bench, format_table, write_json

    names = ("model.pt", "model_int8.pt", "model.onnx", "model_int8.onnx", "model.xml", "model_int8.xml")
    models = tuple(str(Path(out) / n) for n in names if (Path(out) / n).is_file())
    result = bench(BenchConfig(models=models, threads=(threads or min(2, os.cpu_count() or 1),), data=data,
                               min_runs=50, min_seconds=1.0, warmup=5))
    write_json(result, Path(out) / "bench.json")
    return [format_table(result)]
