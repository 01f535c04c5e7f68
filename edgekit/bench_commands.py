"""`edgekit bench` (run, compare): latency, accuracy and size tables across runtimes, precisions and threads."""
from __future__ import annotations

from pathlib import Path

import click

from edgekit.core import checks
from edgekit.core.errors import BadInputError
from edgekit.group import cli


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
@click.option("--requests", default=0, show_default=True,
              help="Also measure throughput with N inferences in flight (OpenVINO AsyncInferQueue with N requests; "
                   "onnxruntime/PyTorch: N threads); 0 = latency only. Pair with --hint THROUGHPUT for OpenVINO.")
@click.option("--baseline", type=click.Choice(["reference", "fastest"]), default="reference", show_default=True,
              help="What 'x ref' divides: the reference FP32 row at the same threads, or its fastest thread count.")
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

    for name, path in (("--json", json_path), ("--csv", csv_path), ("--markdown", markdown_path), ("--plot", plot_path)):
        checks.writable_file(name, path)
    cfg = harness.BenchConfig(
        models=models, runtimes=tuple(r.strip() for r in runtimes.split(",") if r.strip()), threads=_int_list(threads),
        options={"device": device, "performance_hint": performance_hint, "inference_precision": inference_precision,
                 "providers": tuple(p.strip() for p in providers.split(",") if p.strip()),
                 "graph_optimization": graph_optimization}, **options)

    if cfg.options["performance_hint"] != "LATENCY" and not cfg.requests:
        click.echo(f"note: --hint {cfg.options['performance_hint']} only pays off with several inferences in flight; "
                   "latency rows run one at a time (add --requests N for a throughput column)", err=True)

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
