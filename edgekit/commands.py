"""The model subcommands (train, quantize, demo, export, verify): thin wrappers that build a config, call the
library and print. `import`/`optimize` are in edgekit.model_commands, `bench` in edgekit.bench_commands, the
camera and meeting commands in edgekit.app_commands."""
from __future__ import annotations

from pathlib import Path

import click

from edgekit.group import cli, need_torch
from edgekit.core.errors import BadInputError
from edgekit.core import checks, jsonio


@cli.command()
@click.option("--data", required=True, help="Image folder (class per sub-folder, optionally train/val/test "
              "splits), a folder of MNIST-style IDX files, or a CSV label file. Clip models: a folder of labelled "
              "videos (<label>/*.avi) or a CSV of segments (video,start,end,label[,subject]).")
@click.option("--model", default="mobilenet_v2", show_default=True,
              help="Architecture: mobilenet_v2, mobilenet_v3_large, mobilenet_v3_small, or small_cnn (grey, "
              "for 28x28 digits and the like); for clips: mobilenet3d, mobilenet3d_x0_5 (3D MobileNetV2 "
              "students) or i3d_mobilenet_v2 (inflated from the ImageNet MobileNetV2, a teacher).")
@click.option("--weights", default="auto", show_default=True,
              help="'imagenet' (torchvision's, cached or downloaded), 'none' (from scratch) or a .pth file; "
              "auto: imagenet where the architecture has such weights, else none.")
@click.option("--out", default="runs/train", show_default=True, help="Output folder.")
@click.option("--imgsz", "input_size", default=32, show_default=True, help="Square input size in pixels.")
@click.option("--epochs", default=10, show_default=True)
@click.option("--head-epochs", default=2, show_default=True, help="Pretrained only: epochs training the head alone.")
@click.option("--unfreeze-blocks", default=-1, show_default=True,
              help="Pretrained only: backbone blocks trained in stage 2 (-1 = all).")
@click.option("--train-bn", is_flag=True, help="Pretrained only: BatchNorm statistics follow the new data (for data "
              "far from ImageNet photographs) instead of staying frozen.")
@click.option("--batch", "batch_size", default=64, show_default=True)
@click.option("--lr", default=1e-3, show_default=True)
@click.option("--finetune-lr", default=1e-4, show_default=True, help="Stage 2 learning rate.")
@click.option("--weight-decay", default=0.0, show_default=True)
@click.option("--dropout", default=0.2, show_default=True)
@click.option("--hidden", default=0, show_default=True, help="Hidden width of the head (0: linear head).")
@click.option("--binary/--multiclass", default=None, help="Single-logit BCE head (default: when 2 classes).")
@click.option("--positive", default=None, help="Two classes: the positive label, reported by precision/recall and "
              "scored by the apps (default: a label named like attentive/positive/1, else the second; recorded).")
@click.option("--pos-weight", type=float, default=None, help="BCE pos_weight (default: negatives/positives).")
@click.option("--class-weights", is_flag=True, help="Inverse-frequency cross-entropy weights.")
@click.option("--patience", default=4, show_default=True, help="Early stopping patience (epochs).")
@click.option("--schedule", type=click.Choice(["plateau", "cosine"]), default="plateau", show_default=True,
              help="Learning rate: cut on a validation plateau, or cosine decay to zero over each stage.")
@click.option("--val-fraction", default=0.1, show_default=True)
@click.option("--test-fraction", default=0.2, show_default=True, help="Ignored when the data has a test split.")
@click.option("--group-column", default=None, help="CSV column with a person/subject id: splits keep groups whole.")
@click.option("--path-column", default="path", show_default=True)
@click.option("--label-column", default="label", show_default=True)
@click.option("--limit", default=0, show_default=True, help="Use at most N training images (0 = all).")
@click.option("--hflip", is_flag=True, help="Random horizontal flips (not for text or digits).")
@click.option("--teacher", default=None, help="Knowledge distillation: an edgekit checkpoint (trained or "
              "`edgekit import`ed) with the same labels; the student also learns its softened outputs.")
@click.option("--kd-temperature", default=4.0, show_default=True, help="Softmax temperature T of the soft targets.")
@click.option("--kd-alpha", default=0.9, show_default=True, help="Weight of the soft-target loss (x T^2); "
              "1 - alpha goes to the hard labels.")
@click.option("--seed", default=0, show_default=True)
@click.option("--workers", default=0, show_default=True, help="DataLoader worker processes.")
@click.option("--threads", default=0, show_default=True, help="torch threads (0 = default; per process with --nproc).")
@click.option("--nproc", default=1, show_default=True,
              help="Train in N processes on this machine (DistributedDataParallel, gloo backend); the global batch "
              "stays --batch. Several machines: torchrun --nnodes M --nproc-per-node N --rdzv-backend c10d "
              "--rdzv-endpoint HOST:PORT -m edgekit train ARGS (same data path on each).")
@click.option("--clip-frames", default=16, show_default=True, help="Clip models: frames per clip.")
@click.option("--frame-stride", default=1, show_default=True, help="Clip models: use every N-th frame.")
def train(**options) -> None:
    """Train an image (or clip) classifier and report test metrics (writes model.pt, metrics.json, curves.png)."""
    need_torch()
    from edgekit.training.trainer import TrainConfig, train as run

    result = run(TrainConfig(**options))
    if result is None:  # a torchrun process other than rank 0: rank 0 reports
        return
    click.echo(result["table"])
    click.echo(f"\ncheckpoint: {result['checkpoint']}  (train time {result['report']['train_seconds']:.0f} s)")
    click.echo(f"next: edgekit quantize {result['checkpoint']} --data {options['data']}", err=True)


@cli.command()
@click.argument("checkpoint", type=click.Path())
@click.option("--data", default=None, help="The data the model was trained on: calibration uses its train "
              "split, the comparison its test split (an imported model: all of it; unlabelled images: agreement only).")
@click.option("--calib", default=None, help="Calibrate on these unlabelled images instead: a folder (recursive), "
              "a video (frames sampled evenly) or a CSV with a path column.")
@click.option("--mode", type=click.Choice(["static", "dynamic", "qat"]), default="static", show_default=True,
              help="static: INT8 weights and activations, calibrated. dynamic: INT8 Linear weights only. "
              "qat: quantization-aware training on --data's train split (then as static).")
@click.option("--qat-epochs", default=3, show_default=True, help="qat: epochs (activation ranges frozen for the last).")
@click.option("--qat-lr", default=1e-4, show_default=True, help="qat: learning rate (SGD, momentum 0.9).")
@click.option("--limit-train", default=0, show_default=True, help="qat: train on at most N images (0 = all).")
@click.option("--qat-kd-alpha", default=0.0, show_default=True,
              help="qat: weight of the FP32 model's own soft outputs in the loss (self-distillation), the rest on "
              "the labels; 0 = labels only.")
@click.option("--qat-kd-temperature", default=1.0, show_default=True, help="qat: temperature of those soft outputs.")
@click.option("--qat-clip-grad", type=float, default=None,
              help="qat: clip the gradient norm to this before each step (default: 1.0 for clip models, whose QAT "
              "diverged without it; off for image models; 0 = off).")
@click.option("--engine", type=click.Choice(["auto", "x86", "fbgemm", "qnnpack", "onednn"]), default="auto",
              show_default=True, help="Quantized kernel set; auto picks x86 on Intel/AMD, qnnpack on ARM.")
@click.option("--reduce-range/--full-range", default=False, show_default=True,
              help="7-bit activations: avoids int16 saturation on x86 CPUs without VNNI, usually costs accuracy.")
@click.option("--calib-batches", default=32, show_default=True, help="Calibration batches from the train split.")
@click.option("--keep-float", default="", help="Modules kept in float, comma-separated: first (the stem "
              "convolution), last (the classifier), depthwise (every grouped convolution) and/or module names.")
@click.option("--batch", "batch_size", default=32, show_default=True)
@click.option("--out", default=None, help="Output checkpoint (default: <checkpoint>_int8.pt).")
@click.option("--limit-test", default=0, show_default=True, help="Compare on at most N test images (0 = all).")
@click.option("--seed", default=0, show_default=True)
@click.option("--threads", default=0, show_default=True)
@click.option("--json", "json_path", default=None, help="Also write the comparison as JSON.")
def quantize(checkpoint: str, json_path: str | None, **options) -> None:
    """PyTorch post-training INT8 quantization with real calibration data; prints FP32 vs INT8."""
    need_torch()
    from edgekit.training.quantize import QuantizeConfig, format_comparison, quantize_checkpoint

    checks.writable_file("--json", json_path)
    keep = tuple(k.strip() for k in options.pop("keep_float").split(",") if k.strip())
    result = quantize_checkpoint(QuantizeConfig(checkpoint=checkpoint, keep_float=keep, **options))
    click.echo(format_comparison(result))
    if json_path:
        jsonio.write(json_path, result, indent=2, default=str)
    click.echo(f"INT8 checkpoint: {result['int8']['path']}")
    if result.get("gate_problems"):
        click.echo("INT8 misses the gate that export and verify apply: " + "; ".join(result["gate_problems"])
                   + ". Try more or other calibration images (--calib), --reduce-range, or export's ONNX/OpenVINO INT8.",
                   err=True)
        raise click.exceptions.Exit(1)


@cli.command()
@click.option("--out", default="runs/demo", show_default=True, help="Output folder.")
@click.option("--epochs", default=12, show_default=True)
@click.option("--threads", default=0, show_default=True)
def demo(out: str, epochs: int, threads: int) -> None:
    """Run the whole flow on the embedded Fashion-MNIST subset: train, quantize to INT8, export, verify, bench.

    No network and no data to find: 3,000 training and 1,000 test images ship inside edgekit. Results are
    printed as each step ends; exit 1 when an artifact missed its verification gate (the others are kept).
    """
    need_torch()
    from edgekit.export.verify import VerificationFailed
    from edgekit.training.demo import run_demo

    failed = run_demo(out=out, epochs=epochs, threads=threads, echo=click.echo)
    if failed:
        raise VerificationFailed(f"{len(failed)} artifact(s) missed their gate: {'; '.join(failed)}")


@cli.command()
@click.argument("checkpoint", type=click.Path(), default="runs/train/model.pt")
@click.option("--format", "formats", multiple=True, default=("onnx",), show_default=True,
              help="onnx or openvino; repeat for several.")
@click.option("--out", default=None, help="Output folder (default: the checkpoint's folder).")
@click.option("--int8", is_flag=True, help="Also write INT8: ONNX QDQ / OpenVINO INT8 (see --onnx-int8, --ov-int8).")
@click.option("--fp16", is_flag=True, help="OpenVINO: also write an FP16 IR.")
@click.option("--data", default=None, help="Calibration and verification data (default: the checkpoint's training data).")
@click.option("--calib", default=None, help="Calibrate on these unlabelled images instead of --data's train split: a "
              "folder (recursive), a video (frames sampled evenly) or a CSV with a path column.")
@click.option("--calib-size", default=1024, show_default=True, help="Calibration images (at most).")
@click.option("--calib-batch", default=32, show_default=True)
@click.option("--onnx-int8", type=click.Choice(["nncf", "ort", "dynamic"]), default="nncf", show_default=True,
              help="ONNX INT8 via NNCF (MinMax ranges + bias correction; measured closer to FP32 on a real ImageNet "
                   "network), onnxruntime's quantize_static (--calib-method, --activation-type, --reduce-range), or "
                   "onnxruntime's dynamic quantization (fully connected layers only, no calibration data).")
@click.option("--onnx-bias-correction", type=click.Choice(["full", "fast"]), default="full", show_default=True,
              help="NNCF on ONNX: full (robust on the demo model) or fast bias correction (see README).")
@click.option("--keep-float", default="", help="Layers kept in float on every INT8 route, comma-separated: first "
              "(the stem convolution), last (the classifier), depthwise (every grouped convolution) and/or node "
              "names (see --debug-layers for the sensitive ones).")
@click.option("--debug-layers", default=None, metavar="FILE",
              help="With --int8 --format onnx: write a CSV with one row per quantized tensor (its own quantization "
                   "error and the error accumulated up to it, SQNR in dB against FP32).")
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True, help="--onnx-int8 ort: onnxruntime's calibration method.")
@click.option("--activation-type", type=click.Choice(["auto", "u8", "s8"]), default="auto", show_default=True,
              help="INT8 activation type; auto: U8 (see README).")
@click.option("--reduce-range/--full-range", default=None,
              help="7-bit activations; default: on for x86 CPUs without VNNI, off elsewhere.")
@click.option("--exclude", multiple=True, help="ONNX node name to keep in float; repeatable.")
@click.option("--ov-int8", type=click.Choice(["nncf", "qdq"]), default="nncf", show_default=True,
              help="OpenVINO INT8 via NNCF (closer to FP32 decisions, smaller) or from the QDQ ONNX (same scales as ONNX Runtime).")
@click.option("--ov-bias-correction", type=click.Choice(["full", "fast"]), default="full", show_default=True,
              help="NNCF bias correction: full (layer by layer after quantization; closer to FP32) or fast "
                   "(NNCF's default; quicker on large models).")
@click.option("--ov-max-drop", type=float, default=None, metavar="X",
              help="OpenVINO INT8 with NNCF's accuracy control: layers return to float, costliest first, until top-1 "
                   "agreement with FP32 on the calibration images drops at most X (e.g. 0.05). Slower export.")
@click.option("--target", type=click.Choice(["host", "pi4", "pi5", "arm64", "x86-avx2", "x86-vnni"]), default=None,
              help="The CPU the INT8 models are for: chooses 7-bit ranges (reduce_range, NNCF's overflow fix) only "
                   "where its kernels need them (x86 without VNNI), and records it. Default: host; pi4 with --bundle pi.")
@click.option("--bake-preprocess", is_flag=True,
              help="The graph takes uint8 NHWC frames and normalises inside; a device only resizes.")
@click.option("--input-color", type=click.Choice(["BGR", "RGB", "GRAY"]), default="BGR", show_default=True,
              help="Colour order of the frames a baked graph takes (OpenCV gives BGR).")
@click.option("--dynamic-batch", is_flag=True, help="Variable batch dimension (default: batch 1).")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Compare every artifact with the PyTorch model on held-out images before writing it.")
@click.option("--verify-images", default=1000, show_default=True, help="Held-out images for verification (0 = all).")
@click.option("--seed", default=0, show_default=True)
@click.option("--bundle", type=click.Choice(["pi"]), default=None,
              help="pi: a folder for a Raspberry Pi: models/, edgekit's wheel, pinned torch-free requirements, "
                   "install.sh, run.sh, README.md (--out is the bundle folder; default <checkpoint folder>/pi_bundle).")
def export(checkpoint: str, formats: tuple[str, ...], bundle: str | None, keep_float: str, **options) -> None:
    """Export a checkpoint to ONNX (FP32, QDQ INT8) and/or OpenVINO IR (FP32, FP16, INT8).

    Every artifact carries the model spec (in the file and in a NAME.edgekit.json sidecar) and is verified
    against PyTorch before it is written: the ones that pass are written, one that misses its gate is not
    (the table says why and what to try), and the exit status is then 1.
    """
    need_torch()
    from edgekit.export.core import ExportConfig
    from edgekit.export.core import export as run_export

    if bundle:
        if "onnx" not in formats:
            raise BadInputError("--bundle pi needs ONNX models: add --format onnx")
        bundle_dir = Path(options["out"] or Path(checkpoint).parent / "pi_bundle")
        options["out"] = str(bundle_dir / "models")
    keep = tuple(k.strip() for k in keep_float.split(",") if k.strip())
    if options["target"] is None:
        options["target"] = "pi4" if bundle else "host"  # a bundle is for the weakest common board
    result = run_export(ExportConfig(checkpoint=checkpoint, formats=tuple(formats), keep_float=keep, **options))
    if result.verify_table:
        click.echo(result.verify_table)
    for line in result.lines:
        click.echo(line)
    if bundle and result.artifacts:
        from edgekit.export.bundle import make_pi_bundle

        for line in make_pi_bundle(bundle_dir, [a.path for a in result.artifacts], options["target"]):
            click.echo(line)
    elif result.artifacts:
        click.echo(f"next: edgekit verify {' '.join(str(a.path) for a in result.artifacts)} --reference {checkpoint}")
    if result.failed:
        from edgekit.export.verify import VerificationFailed

        for line in result.failed:
            click.echo(line, err=True)
        raise VerificationFailed(f"{len(result.failed)} artifact(s) missed their gate and were not written; "
                                 f"{len(result.artifacts)} written")


@cli.command()
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--reference", required=True, type=click.Path(), help="The FP32 edgekit checkpoint they came from.")
@click.option("--data", default=None, help="Data with a test split (default: the reference's training data).")
@click.option("--images", default=1000, show_default=True, help="Held-out test images (0 = all).")
@click.option("--seed", default=0, show_default=True)
@click.option("--json", "json_path", default=None, help="Also write the rows as JSON.")
def verify(models: tuple[str, ...], reference: str, data: str | None, images: int, seed: int,
           json_path: str | None) -> None:
    """Run held-out images through the PyTorch reference and each exported model; exit 1 if a tolerance breaks.

    The reference is the checkpoint computed in float64, so each row's logit difference is that model's own
    error; PyTorch FP32 is listed too, for scale, and never fails the command."""
    need_torch()
    checks.writable_file("--json", json_path)
    from edgekit.export.verify import VerificationFailed, failures
    from edgekit.export.verify import verify as run_verify
    from edgekit.models.checkpoint import load_checkpoint

    if data is None:
        data = load_checkpoint(reference).metrics.get("config", {}).get("data")
        if not data:
            raise BadInputError("pass --data: the reference checkpoint does not record its training data")
    rows, table = run_verify([Path(m) for m in models], Path(reference), data, images, seed)
    click.echo(table)
    if json_path:
        jsonio.write(json_path, [
            {k: getattr(r, k) for k in ("name", "precision", "max_abs", "mean_abs", "agreement", "top5", "accuracy",
                                        "delta_pp", "status")} for r in rows], indent=2)
    if failures(rows):
        raise VerificationFailed("a tolerance is broken (see the status column)")
