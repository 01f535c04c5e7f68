"""`edgekit import` (a model edgekit did not train, with a spec attached) and `edgekit optimize` (the fastest INT8
or FP16 candidate within an accuracy budget): thin wrappers around edgekit.export.importing and .optimize."""
from __future__ import annotations

import click

from edgekit.core.errors import BadInputError
from edgekit.group import cli, need_torch


def _floats(name: str, value: str | None) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        return tuple(float(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise BadInputError(f"{name} takes comma-separated numbers such as 0.5,0.5,0.5; got {value!r}") from None


@cli.command("import")
@click.argument("source")
@click.option("--out", default=None, help="Output folder (default: runs/import/<name>).")
@click.option("--arch", default=None, help="Architecture of a state dict (default: the registered one it fits).")
@click.option("--labels", default=None, help="Labels file (one per line, in output order) or 'imagenet' "
              "(the default for 1000 outputs).")
@click.option("--imgsz", "input_size", type=int, default=None, help="Input size (default: 224, or the ONNX graph's).")
@click.option("--resize", type=click.Choice(["squash", "letterbox", "crop"]), default=None,
              help="How images reach the input size (default: crop for ImageNet models, squash otherwise).")
@click.option("--resize-to", default=0, show_default=True, help="crop: resize the shorter side to this first "
              "(0: the weights' own, or input/0.875).")
@click.option("--color", type=click.Choice(["RGB", "BGR", "GRAY"]), default="RGB", show_default=True,
              help="Colour order the network expects.")
@click.option("--mean", default=None, help="Per-channel mean after scaling to [0, 1] (default: ImageNet's).")
@click.option("--std", default=None, help="Per-channel std (default: ImageNet's).")
@click.option("--positive", default=None, help="One-logit models: the positive label (the second in --labels).")
@click.option("--trust-pickle", is_flag=True, help="Allow a pickled full model (unpickling runs code from the file).")
def import_cmd(source: str, mean: str | None, std: str | None, **options) -> None:
    """Make a model edgekit did not train into an edgekit model: attach a spec (labels, input size, colour
    order, normalisation, resize mode). Every other command then works on the result.

    \b
    SOURCE: torchvision:mobilenet_v2          torchvision's ImageNet weights (from its cache)
            weights.pth --arch mobilenet_v2   a torchvision state dict
            model.onnx --labels labels.txt    an ONNX file (plain torch.onnx.export is fine)
    """
    from edgekit.export.importing import IMAGENET_MEAN, IMAGENET_STD, ImportConfig, import_model

    cfg = ImportConfig(source=source, mean=_floats("--mean", mean) or IMAGENET_MEAN,
                       std=_floats("--std", std) or IMAGENET_STD, **options)
    path, spec = import_model(cfg)
    click.echo(f"wrote {path}: {spec.arch}, {len(spec.labels)} labels, {spec.input_size[0]}x{spec.input_size[1]} "
               f"{spec.color}, resize {spec.resize}" + (f" (shorter side {spec.resize_to})" if spec.resize_to else ""))
    if path.suffix == ".pt":
        click.echo(f"next: edgekit export {path} --int8 --calib PHOTOS   or   edgekit bench {path}", err=True)
    else:
        click.echo(f"next: edgekit bench {path}   or   edgekit run --model {path} --source 0", err=True)


@cli.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--calib", required=True, help="Unlabelled calibration images: a folder (recursive), a video or a CSV.")
@click.option("--eval", "eval_data", required=True, help="Evaluation images: labelled data (the budget is on accuracy) "
              "or unlabelled images (the budget is on top-1 agreement with FP32).")
@click.option("--max-drop", default=0.01, show_default=True,
              help="Largest accepted drop, as a fraction: 0.01 = 1 pp of accuracy, or 99% agreement.")
@click.option("--runtimes", default="onnxruntime,openvino", show_default=True, help="Runtimes to try candidates on.")
@click.option("--out", default=None, help="Folder for the winner (default: <checkpoint folder>/optimized).")
@click.option("--calib-size", default=300, show_default=True)
@click.option("--images", default=0, show_default=True, help="Evaluation images (0 = all).")
@click.option("--threads", default=2, show_default=True)
@click.option("--runs", default=50, show_default=True, help="Timed batch-1 calls per candidate.")
def optimize(checkpoint: str, eval_data: str, runtimes: str, **options) -> None:
    """Try the INT8 (and FP16) candidates, print agreement / accuracy delta / p50 / size for each, and write the
    fastest one within --max-drop. Exit 1 when none is within budget."""
    need_torch()
    from edgekit.export.optimize import OptimizeConfig, format_table, optimize as run_optimize

    cfg = OptimizeConfig(checkpoint=checkpoint, eval=eval_data,
                         runtimes=tuple(r.strip() for r in runtimes.split(",") if r.strip()), **options)
    results, winner, fp32 = run_optimize(cfg, lambda line: click.echo(line, err=True))
    click.echo(format_table(results, winner, fp32, cfg))
    if winner is None:
        raise click.exceptions.Exit(1)


@cli.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--data", required=True, help="The labelled data the model was trained on: its test split measures, "
              "its train split fine-tunes.")
@click.option("--method", type=click.Choice(["channel", "l1-unstructured"]), default="channel", show_default=True,
              help="channel: remove whole output channels (smaller and faster network). l1-unstructured: zero the "
              "smallest weights (same dense size and speed; smaller compressed).")
@click.option("--ratios", default="0.1,0.3,0.5,0.7", show_default=True,
              help="Comma-separated pruning ratios: share of channels per layer group, or of all weights.")
@click.option("--finetune-epochs", default=0, show_default=True, help="Fine-tune each pruned model this many "
              "epochs (0: measure the pruned model only).")
@click.option("--lr", default=1e-3, show_default=True, help="Fine-tuning learning rate (Adam, cosine decay).")
@click.option("--protect", default="", help="Comma-separated module names whose channels/weights stay "
              "(the classifier's outputs always stay).")
@click.option("--batch", "batch_size", default=64, show_default=True)
@click.option("--out", default="runs/prune", show_default=True, help="Output folder: one checkpoint per ratio, "
              "prune.json, prune.png.")
@click.option("--limit-train", default=0, show_default=True, help="Fine-tune on at most N train images (0 = all).")
@click.option("--limit-test", default=0, show_default=True, help="Measure on at most N test images (0 = all).")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=0, show_default=True)
def prune(checkpoint: str, ratios: str, protect: str, **options) -> None:
    """Prune a checkpoint at several ratios, before and after fine-tuning; prints accuracy, parameters, MACs,
    sparsity, file and gzip size and latency per ratio, and writes each pruned checkpoint (every other command
    -- quantize, export, verify, bench, run -- takes them like any checkpoint)."""
    need_torch()
    from edgekit.training.prune import PruneConfig, format_sweep, prune_sweep

    parsed = _floats("--ratios", ratios) or ()
    names = tuple(p.strip() for p in protect.split(",") if p.strip())
    result = prune_sweep(PruneConfig(checkpoint=checkpoint, ratios=parsed, protect=names, **options))
    click.echo(format_sweep(result))
    click.echo(f"wrote {options['out']}/prune.json, {result['plot']} and one checkpoint per ratio under {options['out']}")
