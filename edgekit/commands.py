"""`edgekit train`, `edgekit quantize` and `edgekit demo`: thin wrappers over the library."""
from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.cli import cli
from edgekit.errors import require


def _need_torch() -> None:
    require("torch", "train", "training and PyTorch quantization")
    require("torchvision", "train", "the model zoo")


@cli.command()
@click.option("--data", required=True, help="Image folder (class per sub-folder, optionally train/val/test "
              "splits), a folder of MNIST-style IDX files, or a CSV label file.")
@click.option("--model", default="mobilenet_v2", show_default=True,
              help="Architecture: mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small.")
@click.option("--weights", default="imagenet", show_default=True,
              help="'imagenet' (torchvision's, cached or downloaded), 'none' (from scratch) or a .pth file.")
@click.option("--out", default="runs/train", show_default=True, help="Output folder.")
@click.option("--imgsz", "input_size", default=32, show_default=True, help="Square input size in pixels.")
@click.option("--epochs", default=10, show_default=True)
@click.option("--head-epochs", default=2, show_default=True, help="Pretrained only: epochs training the head alone.")
@click.option("--unfreeze-blocks", default=-1, show_default=True,
              help="Pretrained only: backbone blocks trained in stage 2 (-1 = all).")
@click.option("--batch", "batch_size", default=64, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--finetune-lr", default=1e-4, show_default=True, help="Stage 2 learning rate.")
@click.option("--weight-decay", default=0.0, show_default=True)
@click.option("--dropout", default=0.2, show_default=True)
@click.option("--hidden", default=0, show_default=True, help="Hidden width of the head (0: linear head).")
@click.option("--binary/--multiclass", default=None, help="Single-logit BCE head (default: when 2 classes).")
@click.option("--pos-weight", type=float, default=None, help="BCE pos_weight (default: negatives/positives).")
@click.option("--class-weights", is_flag=True, help="Inverse-frequency cross-entropy weights.")
@click.option("--patience", default=4, show_default=True, help="Early stopping patience (epochs).")
@click.option("--val-fraction", default=0.1, show_default=True)
@click.option("--test-fraction", default=0.2, show_default=True, help="Ignored when the data has a test split.")
@click.option("--group-column", default=None, help="CSV column with a person/subject id: splits keep groups whole.")
@click.option("--path-column", default="path", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--limit", default=0, show_default=True, help="Use at most N training images (0 = all).")
@click.option("--hflip", is_flag=True, help="Random horizontal flips (not for text or digits).")
@click.option("--seed", default=0, show_default=True)
@click.option("--workers", default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--threads", default=0, show_default=True, help="torch threads (0 = default).")
def train(**options) -> None:
    """Train an image classifier and report test metrics (writes model.pt, metrics.json, curves.png)."""
    _need_torch()
    from edgekit.training.trainer import TrainConfig, train as run

    result = run(TrainConfig(**options))
    click.echo(result["table"])
    click.echo(f"\ncheckpoint: {result['checkpoint']}  (train time {result['report']['train_seconds']:.0f} s)")
    click.echo(f"next: edgekit quantize {result['checkpoint']} --data {options['data']}", err=True)


@cli.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--data", required=True, help="The data the model was trained on: calibration uses its train "
              "split, the comparison its test split.")
@click.option("--mode", type=click.Choice(["static", "dynamic"]), default="static", show_default=True,
              help="static: INT8 weights and activations, calibrated. dynamic: INT8 Linear weights only.")
@click.option("--engine", type=click.Choice(["auto", "x86", "fbgemm", "qnnpack", "onednn"]), default="auto",
              show_default=True, help="Quantized kernel set; auto picks x86 on Intel/AMD, qnnpack on ARM.")
@click.option("--reduce-range/--full-range", default=False, show_default=True,
              help="7-bit activations: avoids int16 saturation on x86 CPUs without VNNI, usually costs accuracy.")
@click.option("--calib-batches", default=32, show_default=True, help="Calibration batches from the train split.")
@click.option("--batch", "batch_size", default=32, show_default=True)
@click.option("--out", default=None, help="Output checkpoint (default: <checkpoint>_int8.pt).")
@click.option("--limit-test", default=0, show_default=True, help="Compare on at most N test images (0 = all).")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=0, show_default=True)
@click.option("--json", "json_path", default=None, help="Also write the comparison as JSON.")
def quantize(checkpoint: str, json_path: str | None, **options) -> None:
    """PyTorch post-training INT8 quantization with real calibration data; prints FP32 vs INT8."""
    _need_torch()
    from edgekit.training.quantize import QuantizeConfig, format_comparison, quantize_checkpoint

    result = quantize_checkpoint(QuantizeConfig(checkpoint=checkpoint, **options))
    click.echo(format_comparison(result))
    if json_path:
        Path(json_path).write_text(json.dumps(result, indent=2, default=str) + "\n")
    click.echo(f"INT8 checkpoint: {result['int8']['path']}")


@cli.command()
@click.option("--out", default="runs/demo", show_default=True, help="Output folder.")
@click.option("--epochs", default=12, show_default=True)
@click.option("--threads", default=0, show_default=True)
def demo(out: str, epochs: int, threads: int) -> None:
    """Run the whole flow on the embedded Fashion-MNIST subset: train, quantize to INT8, compare.

    No network and no data to find: 3,000 training and 1,000 test images ship inside edgekit.
    """
    _need_torch()
    from edgekit.training.demo import run_demo

    click.echo(run_demo(out=out, epochs=epochs, threads=threads))
