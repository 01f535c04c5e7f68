"""The `edgekit` subcommands: thin wrappers that build a config, call the library and print."""
from __future__ import annotations

import json
from pathlib import Path

import click

from edgekit.group import cli
from edgekit.core import checks
from edgekit.core.errors import BadInputError, require


def _ctrl_c_interrupts() -> None:
    """Make Ctrl-C (SIGINT) raise KeyboardInterrupt in this process, whatever we inherited.

    A shell that starts a job in the background (``cmd &`` in a script) sets SIGINT to "ignore" for it,
    every child inherits that, and Python then leaves it ignored: Ctrl-C or ``kill -INT`` would not stop
    `edgekit run`, and its video would never be finalised. The long-running commands that promise clean
    Ctrl-C handling install the handler themselves.
    """
    import signal
    import threading

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.default_int_handler)


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
@click.option("--schedule", type=click.Choice(["plateau", "cosine"]), default="plateau", show_default=True,
              help="Learning rate: cut on a validation plateau, or cosine decay to zero over each stage.")
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
    """Run the whole flow on the embedded Fashion-MNIST subset: train, quantize to INT8, export, verify, bench.

    No network and no data to find: 3,000 training and 1,000 test images ship inside edgekit. Results are
    printed as each step ends; exit 1 when an artifact missed its verification gate (the others are kept).
    """
    _need_torch()
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
@click.option("--int8", is_flag=True, help="Also write INT8: ONNX QDQ (onnxruntime static quantization) / OpenVINO INT8.")
@click.option("--fp16", is_flag=True, help="OpenVINO: also write an FP16 IR.")
@click.option("--data", default=None, help="Calibration and verification data (default: the checkpoint's training data).")
@click.option("--calib-size", default=1024, show_default=True, help="Calibration images from the train split.")
@click.option("--calib-batch", default=32, show_default=True)
@click.option("--calib-method", type=click.Choice(["minmax", "entropy", "percentile"]), default="minmax",
              show_default=True)
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
def export(checkpoint: str, formats: tuple[str, ...], bundle: str | None, **options) -> None:
    """Export a checkpoint to ONNX (FP32, QDQ INT8) and/or OpenVINO IR (FP32, FP16, INT8).

    Every artifact carries the model spec (in the file and in a NAME.edgekit.json sidecar) and is verified
    against PyTorch before it is written: the ones that pass are written, one that misses its gate is not
    (the table says why and what to try), and the exit status is then 1.
    """
    _need_torch()
    from edgekit.export.core import ExportConfig
    from edgekit.export.core import export as run_export

    if bundle:
        if "onnx" not in formats:
            raise BadInputError("--bundle pi needs ONNX models: add --format onnx")
        bundle_dir = Path(options["out"] or Path(checkpoint).parent / "pi_bundle")
        options["out"] = str(bundle_dir / "models")
    result = run_export(ExportConfig(checkpoint=checkpoint, formats=tuple(formats), **options))
    if result.verify_table:
        click.echo(result.verify_table)
    for line in result.lines:
        click.echo(line)
    if bundle and result.artifacts:
        from edgekit.export.bundle import make_pi_bundle

        for line in make_pi_bundle(bundle_dir, [a.path for a in result.artifacts]):
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
    _need_torch()
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
        Path(json_path).write_text(json.dumps([
            {k: getattr(r, k) for k in ("name", "precision", "max_abs", "mean_abs", "agreement", "accuracy",
                                        "delta_pp", "status")} for r in rows], indent=2) + "\n")
    if failures(rows):
        raise VerificationFailed("a tolerance is broken (see the status column)")


class DefaultCommandGroup(click.Group):
    """A group whose first argument may be a subcommand or, when it is not one, the default command's
    arguments: `edgekit bench model.onnx` means `edgekit bench run model.onnx`."""

    default_command = "run"

    def parse_args(self, ctx: click.Context, args: list[str]) -> list[str]:
        if args and args[0] not in self.commands and args[0] not in ("-h", "--help"):
            args = [self.default_command, *args]
        return super().parse_args(ctx, args)


def _int_list(value: str) -> tuple[int, ...]:
    try:
        return tuple(int(v) for v in value.split(",") if v.strip())
    except ValueError:
        raise BadInputError(f"--threads takes comma-separated integers such as 1,2; got {value!r}") from None


@cli.group(cls=DefaultCommandGroup)
def bench() -> None:
    """Latency, accuracy and size of models across runtimes, precisions and thread counts.

    \b
    edgekit bench model.pt model_int8.pt export/model.onnx export/model_int8.xml --data DIR
    edgekit bench export/model.onnx --runtimes onnxruntime,openvino --threads 1,2 --json a.json
    edgekit bench compare a.json b.json
    """


@bench.command("run")
@click.argument("models", nargs=-1, required=True, type=click.Path())
@click.option("--runtimes", default="", help="Comma-separated: pytorch, onnxruntime, openvino, or 'all' "
              "(every runtime that can open each model). Default: the natural one per file (.pt, .onnx, .xml).")
@click.option("--threads", default="2", show_default=True, help="Intra-op threads, the same for every runtime; "
              "a comma-separated list runs each.")
@click.option("--batch", default=1, show_default=True, help="Batch size (1 = single stream, the camera case).")
@click.option("--data", default=None, help="Test data for accuracy, delta vs FP32 and top-1 agreement: an image "
              "data set (its test split) or an .npz with preprocessed inputs 'x' and labels 'y'.")
@click.option("--images", default=0, show_default=True, help="Test images for accuracy (0 = all).")
@click.option("--warmup", default=10, show_default=True, help="Untimed runs before timing.")
@click.option("--min-runs", default=100, show_default=True, help="Timed runs per row, at least ...")
@click.option("--min-seconds", default=3.0, show_default=True, help="... and at least this long.")
@click.option("--timeout", default=900.0, show_default=True, help="Seconds before a row is marked failed.")
@click.option("--device", default="CPU", show_default=True, help="OpenVINO device.")
@click.option("--hint", "performance_hint", type=click.Choice(["LATENCY", "THROUGHPUT", "CUMULATIVE_THROUGHPUT"]),
              default="LATENCY", show_default=True, help="OpenVINO performance hint.")
@click.option("--ov-precision", "inference_precision", type=click.Choice(["f32", "bf16", "f16"]), default="f32",
              show_default=True, help="OpenVINO inference precision for float parts (f32 keeps FP32 rows FP32).")
@click.option("--providers", default="CPUExecutionProvider", show_default=True,
              help="onnxruntime execution providers, comma-separated, in priority order.")
@click.option("--graph-opt", "graph_optimization", type=click.Choice(["disable", "basic", "extended", "all"]),
              default="all", show_default=True, help="onnxruntime graph optimisation level.")
@click.option("--json", "json_path", default=None, help="Write rows + environment as JSON (for `bench compare`).")
@click.option("--csv", "csv_path", default=None, help="Write rows as CSV.")
@click.option("--markdown", "markdown_path", default=None, help="Write the table as Markdown.")
@click.option("--plot", "plot_path", default=None, help="Write a PNG: p90 latency vs accuracy, marker ~ size.")
def bench_run(models: tuple[str, ...], runtimes: str, threads: str, json_path, csv_path, markdown_path, plot_path,
              device, performance_hint, inference_precision, providers, graph_optimization, **options) -> None:
    """Benchmark MODELS (.pt checkpoints, .onnx, OpenVINO .xml); exit 1 when a row fails."""
    from edgekit.benchmarks import harness

    cfg = harness.BenchConfig(
        models=models, runtimes=tuple(r.strip() for r in runtimes.split(",") if r.strip()), threads=_int_list(threads),
        options={"device": device, "performance_hint": performance_hint, "inference_precision": inference_precision,
                 "providers": tuple(p.strip() for p in providers.split(",") if p.strip()),
                 "graph_optimization": graph_optimization}, **options)

    def progress(i: int, n: int, row: dict) -> None:
        what = f"p90 {row['p90_ms']:.2f} ms" if row["status"] == "ok" else f"{row['status']}: {row['reason']}"
        click.echo(f"[{i}/{n}] {row['name']} {row['runtime']} threads={row['threads']}: {what}", err=True)

    result = harness.bench(cfg, progress)
    click.echo(harness.format_table(result))
    for path, write in ((json_path, harness.write_json), (csv_path, harness.write_csv), (plot_path, harness.plot),
                        (markdown_path, lambda r, p: p.write_text(harness.format_markdown(r)))):
        if path:
            write(result, Path(path))
            click.echo(f"wrote {path}", err=True)
    if any(r["status"] == "failed" for r in result["rows"]):
        raise click.exceptions.Exit(1)


@bench.command("compare")
@click.argument("a", type=click.Path())
@click.argument("b", type=click.Path())
def bench_compare(a: str, b: str) -> None:
    """Two `bench --json` results side by side (two machines, or two runs): p50/p90 and B/A ratios."""
    from edgekit.benchmarks import harness

    table, _ = harness.compare(harness.load_result(a), harness.load_result(b), (a, b))
    click.echo(table)


@cli.command("run")
@click.option("--model", required=True, type=click.Path(), help="A .pt checkpoint, .onnx or OpenVINO .xml.")
@click.option("--runtime", default=None, help="pytorch, onnxruntime or openvino (default: the file's natural one).")
@click.option("--source", default="0", show_default=True,
              help="Camera index, video file, image folder or stream URL (rtsp://, http://).")
@click.option("--app", type=click.Choice(["classify", "attend", "driver"]), default="classify", show_default=True,
              help="classify: whole frame (or face with --faces); attend: largest face -> binary attentiveness "
                   "averaged over --window frames; driver: 10-class distraction + eye-closure drowsiness alerts.")
@click.option("--faces", default=None, help="Face detector: haar, none or a cascade .xml "
              "(default: haar for attend/driver, none for classify).")
@click.option("--out", default="runs/run", show_default=True,
              help="Folder for events.jsonl, summary.json and (with --save-video) annotated.avi.")
@click.option("--save-video/--no-save-video", default=True, show_default=True, help="Write the annotated video.")
@click.option("--serve", default=None, metavar="HOST:PORT",
              help="Stream the annotated video as MJPEG over HTTP (e.g. :8080; open http://HOST:PORT/ in a browser).")
@click.option("--show", is_flag=True, help="Show a window (needs a display and OpenCV with GUI; q quits).")
@click.option("--smooth", default="window:5", show_default=True, help="window:N, ema:ALPHA or none.")
@click.option("--hold", default=3, show_default=True, help="Frames a new label must stay on top before it is reported.")
@click.option("--every", default=1, show_default=True, help="Run the model on every k-th frame only.")
@click.option("--motion-gate", default=0.0, show_default=True,
              help="Reuse the last result while the picture changes less than this (mean grey levels, 0-255; 0 = off).")
@click.option("--scale", default=1.0, show_default=True, help="Resize frames by this factor before anything else.")
@click.option("--window", default=5, show_default=True, help="attend: frames averaged per decision.")
@click.option("--positive", default=None, help="attend: the attentive label (default: the model's second label).")
@click.option("--safe-label", default=None, help="driver: the safe-driving label (default: c0 or a label with 'safe').")
@click.option("--alert-after", default=2.0, show_default=True, help="driver: seconds of distraction before an alert.")
@click.option("--perclos-seconds", default=30.0, show_default=True, help="driver: PERCLOS window in seconds.")
@click.option("--perclos-threshold", default=0.3, show_default=True,
              help="driver: share of closed-eye frames in the window that raises the drowsiness alert.")
@click.option("--realtime", is_flag=True,
              help="Play a video file or folder at its frame rate, like a camera (the newest frame wins).")
@click.option("--loop", is_flag=True, help="Restart a video file or folder at its end (until Ctrl-C or --max-frames).")
@click.option("--reconnect", default=5, show_default=True, help="URL sources: re-open attempts (with backoff) after a drop.")
@click.option("--max-frames", default=0, show_default=True, help="Stop after N frames (0 = until the source ends).")
@click.option("--threads", default=2, show_default=True, help="Inference threads.")
def run_cmd(model: str, runtime: str | None, source: str, app: str, faces: str | None, out: str, save_video: bool,
            serve: str | None, show: bool, smooth: str, hold: int, every: int, motion_gate: float, scale: float,
            window: int, positive: str | None, safe_label: str | None, alert_after: float, perclos_seconds: float,
            perclos_threshold: float, realtime: bool, loop: bool, reconnect: int, max_frames: int,
            threads: int) -> None:
    """Classify frames from a camera, video, folder or URL in real time with any runtime.

    Prints a per-stage latency summary at the end (Ctrl-C ends early; files written so far are kept).
    """
    _ctrl_c_interrupts()
    from edgekit.edge_apps import apps
    from edgekit.edge_apps.faces import load_detector
    from edgekit.edge_apps.pipeline import (JsonlEvents, Pipeline, PipelineConfig, StreamSink, VideoSink,
                                            WindowSink, format_summary)
    from edgekit.edge_apps.smoothing import Smoother
    from edgekit.edge_apps.sources import FrameSource
    from edgekit.runtimes import RuntimeOptions, load_runtime

    config = PipelineConfig(every=every, max_frames=max_frames, motion_gate=motion_gate, scale=scale)
    checks.within("--window", window, 1, 10_000)
    checks.within("--reconnect", reconnect, 0, 1000)
    smoother = Smoother.parse(smooth, hold)
    detector = load_detector(faces if faces is not None else ("none" if app == "classify" else "haar"))
    rt = load_runtime(model, runtime, RuntimeOptions(threads=threads))
    timer = apps.Timer()
    if app == "attend":
        worker = apps.AttendApp(rt, timer, detector, window=window, positive=positive)
    elif app == "driver":
        worker = apps.DriverApp(rt, timer, smoother, detector, safe_label=safe_label, alert_after=alert_after,
                                perclos_seconds=perclos_seconds, perclos_threshold=perclos_threshold)
    else:
        worker = apps.ClassifyApp(rt, timer, smoother, faces=detector)
    frames = FrameSource(source, reconnect=reconnect, realtime=realtime, loop=loop)
    folder = Path(out)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot write to {folder}: {exc.strerror}") from exc
    sinks = [VideoSink(folder / "annotated.avi", frames.fps)] if save_video else []
    if show:
        sinks.append(WindowSink())
    if serve:
        from edgekit.edge_apps.stream import MjpegServer

        server = MjpegServer(serve, title=f"edgekit run --app {app}")
        sinks.append(StreamSink(server))
        click.echo(f"streaming on {server.url}", err=True)
    pipeline = Pipeline(worker, timer, config, events=JsonlEvents(folder / "events.jsonl"), sinks=sinks)
    try:
        summary = pipeline.run(frames)
    except KeyboardInterrupt:
        summary = pipeline.summary(frames)  # run() closed the sinks: the video is finalised, events flushed
        click.echo("interrupted", err=True)
    finally:
        frames.close()
        rt.close()
    (folder / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    click.echo(format_summary(summary))
    click.echo(f"wrote {folder / 'events.jsonl'}, {folder / 'summary.json'}"
               + (f", {folder / 'annotated.avi'}" if save_video else ""), err=True)


@cli.command()
@click.option("--host", default="0.0.0.0", show_default=True, help="Interface for participants.")
@click.option("--port", default=7700, show_default=True, help="TCP port for participants (0 = any free port).")
@click.option("--http", default=":8080", show_default=True, metavar="HOST:PORT",
              help="Dashboard (annotated grid as MJPEG, status panel, /status.json); 'off' to disable.")
@click.option("--token", envvar="EDGEKIT_TOKEN", default="",
              help="Shared join token (or $EDGEKIT_TOKEN); a random one is made and printed when empty.")
@click.option("--fps", default=10.0, show_default=True, help="Grids per second.")
@click.option("--timeout", default=6.0, show_default=True, help="Seconds of silence before a participant is dropped.")
@click.option("--max-clients", default=64, show_default=True)
@click.option("--max-message-kb", default=2048, show_default=True, help="Largest accepted message (a tile).")
@click.option("--tls-cert", default=None, type=click.Path(), help="PEM certificate: participants connect with TLS.")
@click.option("--tls-key", default=None, type=click.Path(), help="PEM private key for --tls-cert.")
@click.option("--duration", default=0.0, show_default=True, help="Stop after N seconds (0 = until Ctrl-C).")
@click.option("--json", "json_path", default=None, help="Write the final status here at exit.")
def serve(host: str, port: int, http: str, token: str, fps: float, timeout: float, max_clients: int,
          max_message_kb: int, tls_cert: str | None, tls_key: str | None, duration: float,
          json_path: str | None) -> None:
    """EdgeAttend server: participants `edgekit join`, the host watches the annotated grid in a browser."""
    _ctrl_c_interrupts()
    import asyncio

    from edgekit.edge_apps.meeting import MeetingServer, ServerConfig

    server = MeetingServer(ServerConfig(host=host, port=port, http=None if http == "off" else http, token=token,
                                        fps=fps, timeout=timeout, max_clients=max_clients,
                                        max_message=max_message_kb * 1024, tls_cert=tls_cert, tls_key=tls_key,
                                        duration=duration))

    def ready(s: MeetingServer) -> None:
        click.echo(f"meeting on {host}:{s.port}{' (TLS)' if tls_cert else ''}"
                   + (f", dashboard {s.http.url}" if s.http else "")
                   + ("" if token else f", join token {s.token}"), err=True)
        click.echo(f"participants: edgekit join --server HOST:{s.port} --name NAME --token TOKEN --model M.onnx",
                   err=True)

    try:
        asyncio.run(server.serve(ready))
    except KeyboardInterrupt:
        click.echo("stopped", err=True)
    status = server.status()
    if json_path:
        Path(json_path).write_text(json.dumps(status, indent=2) + "\n")
    lat = status["latency_ms"]
    click.echo(f"{server.grids} grids, {server.joins_and_leaves} joins/leaves, {server.rejected} connections refused"
               + (f", frame-to-grid p50 {lat['p50']:.1f} ms p99 {lat['p99']:.1f} ms" if lat else ""))


@cli.command()
@click.option("--server", required=True, metavar="HOST:PORT", help="The `edgekit serve` address.")
@click.option("--name", required=True, help="Your name on the grid.")
@click.option("--token", envvar="EDGEKIT_TOKEN", default="", help="The meeting's join token (or $EDGEKIT_TOKEN).")
@click.option("--model", required=True, type=click.Path(), help="Binary attentiveness model (.onnx, .xml or .pt).")
@click.option("--runtime", default=None, help="pytorch, onnxruntime or openvino (default: the file's natural one).")
@click.option("--source", default="0", show_default=True, help="Camera index, video file or URL.")
@click.option("--loop", is_flag=True, help="Restart a video file at its end (a file standing in for a camera).")
@click.option("--faces", default="haar", show_default=True, help="Face detector: haar or a cascade .xml.")
@click.option("--window", default=5, show_default=True, help="Frames averaged per decision.")
@click.option("--privacy", is_flag=True, help="Send labels only, never video.")
@click.option("--tls", is_flag=True, help="Connect with TLS.")
@click.option("--tls-ca", default=None, type=click.Path(), help="CA file that signed the server's certificate.")
@click.option("--fps", default=10.0, show_default=True, help="Tiles per second at most.")
@click.option("--duration", default=0.0, show_default=True, help="Leave after N seconds (0 = until Ctrl-C).")
@click.option("--out", default="runs/join", show_default=True, help="Folder for summary.json and the last grid.jpg.")
@click.option("--serve", default=None, metavar="HOST:PORT", help="Show the shared grid as MJPEG on this address.")
@click.option("--show", is_flag=True, help="Show the shared grid in a window (needs a display and OpenCV with GUI).")
@click.option("--threads", default=2, show_default=True)
def join(server: str, name: str, token: str, model: str, runtime: str | None, source: str, loop: bool, faces: str,
         window: int, privacy: bool, tls: bool, tls_ca: str | None, fps: float, duration: float, out: str,
         serve: str | None, show: bool, threads: int) -> None:
    """Join an EdgeAttend meeting: attentiveness is computed here; only a tile and the label are sent."""
    _ctrl_c_interrupts()
    from edgekit.edge_apps import apps
    from edgekit.edge_apps.faces import load_detector
    from edgekit.edge_apps.join import JoinConfig, run_join, write_summary
    from edgekit.edge_apps.meeting import MeetingClient
    from edgekit.runtimes import RuntimeOptions, load_runtime

    config = JoinConfig(source=source, fps=fps, duration=duration, loop=loop)
    checks.within("--window", window, 1, 10_000)
    client = MeetingClient(server, name, token, privacy=privacy, tls=tls, tls_ca=tls_ca)
    rt = load_runtime(model, runtime, RuntimeOptions(threads=threads))
    app = apps.AttendApp(rt, apps.Timer(), load_detector(faces), window=window)
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    viewers = []
    if show:
        from edgekit.edge_apps.pipeline import WindowSink

        viewers.append(WindowSink(f"edgekit meeting: {name}"))
    if serve:
        from edgekit.edge_apps.stream import MjpegServer

        viewers.append(MjpegServer(serve, title=f"edgekit meeting: {name}"))
        click.echo(f"shared grid on {viewers[-1].url}", err=True)
    try:
        result = run_join(client, app, config, folder, viewers)
    except KeyboardInterrupt:
        result = {"interrupted": True, "grids_received": client.grids, "connects": client.connects}
    finally:
        rt.close()
        for viewer in viewers:
            viewer.close()
    write_summary(folder, result)
    click.echo(json.dumps(result))


@cli.group()
def dataset() -> None:
    """Prepare training data for the camera apps."""


@dataset.command("faces")
@click.argument("videos", type=click.Path())
@click.option("--labels", required=True, type=click.Path(), help="CSV with a clip column and a 0-3 level column.")
@click.option("--out", required=True, type=click.Path(), help="Output folder: <label>/*.jpg and faces.csv.")
@click.option("--column", default="Engagement", show_default=True, help="The level column.")
@click.option("--clip-column", default="ClipID", show_default=True, help="The clip file name column.")
@click.option("--threshold", default=2, show_default=True, help="Level >= threshold is 'attentive'.")
@click.option("--fps", default=1.0, show_default=True, help="Frames sampled per second of video.")
@click.option("--size", default=112, show_default=True, help="Crop side in pixels.")
@click.option("--person-level", default=2, show_default=True,
              help="The person is the folder this many levels above the video (DAiSEE: 2).")
def dataset_faces(**options) -> None:
    """Face crops from labelled clips (DAiSEE layout), grouped by person for `edgekit train --group-column person`."""
    from tqdm import tqdm

    from edgekit.edge_apps.dataset import FaceDatasetConfig, build_face_dataset

    cfg = FaceDatasetConfig(**options)
    report = build_face_dataset(cfg, lambda videos: tqdm(videos, desc="clips", unit="clip"))
    click.echo(f"{report.clips} clips, {report.frames} frames sampled, {report.faces} faces from "
               f"{len(report.persons)} persons: " + ", ".join(f"{k} {v}" for k, v in sorted(report.per_label.items())))
    for what, paths in (("without a label (skipped)", report.unlabelled), ("unreadable (skipped)", report.unreadable)):
        if paths:
            click.echo(f"{len(paths)} clips {what}, e.g. {paths[0]}", err=True)
    click.echo(f"next: edgekit train --data {Path(cfg.out) / 'faces.csv'} --group-column person --binary", err=True)


@cli.command()
@click.argument("model", required=False, type=click.Path())
@click.option("--runtime", default=None, help="Runtime to try the model with (default: the file's natural one).")
@click.option("--camera", default=0, show_default=True, help="Camera index to probe.")
@click.option("--json", "json_path", default=None, help="Also write the checks as JSON.")
def doctor(model: str | None, runtime: str | None, camera: int, json_path: str | None) -> None:
    """Check this machine (and optionally MODEL): OS, CPU and what it means for INT8, runtimes, memory,
    camera, and whether the model loads and runs. Exit 1 when a check fails."""
    from edgekit.doctor import format_checks, run_checks, to_json

    checks = run_checks(model, runtime, camera)
    click.echo(format_checks(checks))
    if json_path:
        Path(json_path).write_text(json.dumps(to_json(checks), indent=2) + "\n")
    if any(c.status == "fail" for c in checks):
        raise click.exceptions.Exit(1)
