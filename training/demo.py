"""`edgekit demo`: the whole flow on data that ships inside the package.

Trains MobileNetV2 from scratch on the embedded Fashion-MNIST subset (3,000 train / 1,000 test images,
MIT licence, see edgekit/data/fashion-mnist-mini/README.md), quantizes it to INT8 with calibration on its
training split, exports ONNX (FP32, QDQ INT8) and, when OpenVINO is installed, OpenVINO IR, each verified
against PyTorch on the 1,000 test images, and benchmarks every model on every runtime in one table
(`edgekit bench`). No network, about 2.5 minutes on 2 cores.

Each step prints its result as soon as it has one, so a failure late in the run still leaves the user
with what worked. An INT8 artifact that misses its gate is reported (with the reason) and left out; the
others are written and benchmarked, and :func:`run_demo` returns the list of what failed, so the exit
status can tell whether everything passed. How much margin the demo has against its gates on different
machines and seeds is measured by ``benchmarks/scripts/demo_margin.py``.
"""
from __future__ import annotations

import time
from importlib import resources
from pathlib import Path
from typing import Callable

from edgekit.training.quantize import QuantizeConfig, format_comparison, quantize_checkpoint
from edgekit.training.trainer import TrainConfig, train

# The demo recipe: a cosine learning-rate decay to zero and weight decay. The earlier recipe (1e-3 with
# plateau cuts, no weight decay) stopped while still improving; measured over training seeds, its INT8
# artifacts agreed with FP32 on only 95.5-97.5% of the test images, and those flips swung the accuracy
# delta between +0.7 pp on one machine and -1.7 pp on another. In the same 12 epochs this one converges,
# with smaller weights (narrower INT8 ranges): 97.1-99.1% agreement. The other half of the fix is NNCF's
# full bias correction (edgekit.export.openvino_format.nncf_int8). benchmarks/scripts/demo_margin.py measures how
# far inside its gates every INT8 artifact lands (benchmarks/results/demo_margin*.json).
DEMO_EPOCHS = 12
DEMO_LR = 3e-3
DEMO_WEIGHT_DECAY = 5e-4


def embedded_dataset() -> Path:
    return Path(str(resources.files("edgekit") / "data" / "fashion-mnist-mini"))


def demo_train_config(out: str, epochs: int = DEMO_EPOCHS, threads: int = 0, seed: int = 0) -> TrainConfig:
    return TrainConfig(data=str(embedded_dataset()), model="mobilenet_v2", weights="none", input_size=32,
                       epochs=epochs, lr=DEMO_LR, weight_decay=DEMO_WEIGHT_DECAY, schedule="cosine", batch_size=64,
                       hflip=True, out=out, threads=threads, seed=seed)


def demo_quantize_config(checkpoint, threads: int = 0) -> QuantizeConfig:
    return QuantizeConfig(checkpoint=str(checkpoint), data=str(embedded_dataset()), calib_batches=16, batch_size=32,
                          threads=threads)


def demo_export_config(checkpoint, out: str, formats: tuple[str, ...]):
    from edgekit.export.core import ExportConfig

    return ExportConfig(checkpoint=str(checkpoint), formats=formats, out=out, int8=True, data=str(embedded_dataset()),
                        calib_size=512, verify_images=0)


def pytorch_int8_problems(compared: dict) -> list[str]:
    """The export gate (agreement and accuracy delta, edgekit.export.verify.TOLERANCES) applied to PyTorch INT8."""
    from edgekit.export.verify import TOLERANCES

    gate = TOLERANCES["int8"]
    problems = []
    if compared["top1_agreement"] < gate["min_agreement"]:
        problems.append(f"agreement {compared['top1_agreement']:.4f} < {gate['min_agreement']}")
    if compared["accuracy_delta_pp"] < gate["min_delta_pp"]:
        problems.append(f"accuracy {compared['accuracy_delta_pp']:+.2f} pp < {gate['min_delta_pp']} pp")
    return problems


def run_demo(out: str = "runs/demo", epochs: int = DEMO_EPOCHS, threads: int = 0,
             echo: Callable[[str], None] = print) -> list[str]:
    """Run every step, printing as it goes; returns one line per artifact that missed its gate."""
    start = time.perf_counter()
    data = str(embedded_dataset())
    echo("== edgekit demo: MobileNetV2 on the embedded Fashion-MNIST subset (3,000 train / 1,000 test) ==")
    trained = train(demo_train_config(out, epochs, threads))
    echo("\n-- FP32 test metrics --\n" + trained["table"] + f"\ncheckpoint: {trained['checkpoint']}")
    compared = quantize_checkpoint(demo_quantize_config(trained["checkpoint"], threads))
    echo("\n-- PyTorch static INT8 vs FP32 (same 1,000 test images) --\n" + format_comparison(compared))
    failed = [f"{Path(compared['int8']['path']).name}: {'; '.join(p)}"
              for p in [pytorch_int8_problems(compared)] if p]
    echo("\n-- exported artifacts vs PyTorch FP32 --")
    failed += _export(out, trained["checkpoint"], echo)
    echo("\n-- edgekit bench: every model on its runtime (batch 1, short runs: see README for the protocol) --")
    echo(_bench(out, data, threads))
    echo(f"\nartifacts in {out}/: model.pt, model_int8.pt, metrics.json, curves.png, model*.onnx, model*.xml, "
         f"bench.json\ntotal time {time.perf_counter() - start:.0f} s. A small subset and few epochs: see README "
         "for the full Fashion-MNIST numbers.")
    return failed


def _export(out: str, checkpoint, echo: Callable[[str], None]) -> list[str]:
    import importlib.util

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        echo(f"export not run: {', '.join(missing)} missing (pip install \"edgekit[all]\")")
        return []
    from edgekit.export.core import export

    formats = ("onnx", "openvino") if importlib.util.find_spec("openvino") else ("onnx",)
    result = export(demo_export_config(checkpoint, out, formats))
    echo("\n".join([result.verify_table, "", *result.lines, *result.failed]))
    return result.failed


def _bench(out: str, data: str, threads: int) -> str:
    import os

    from edgekit.benchmarks.harness import BenchConfig, bench, format_table, write_json

    names = ("model.pt", "model_int8.pt", "model.onnx", "model_int8.onnx", "model.xml", "model_int8.xml")
    models = tuple(str(Path(out) / n) for n in names if (Path(out) / n).is_file())
    result = bench(BenchConfig(models=models, threads=(threads or min(2, os.cpu_count() or 1),), data=data,
                               min_runs=50, min_seconds=1.0, warmup=5))
    write_json(result, Path(out) / "bench.json")
    return format_table(result)
