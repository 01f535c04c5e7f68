"""The `edgekit` click group: global options, logging, and one clean error line instead of a traceback.

The subcommands (edgekit.commands) register themselves on :data:`cli`; edgekit.cli puts both together.
"""
from __future__ import annotations

import logging
import sys

import click

from edgekit import __version__
from edgekit.core.errors import EdgekitError, installed

log = logging.getLogger("edgekit")


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, stream=sys.stderr,
                        format="%(message)s" if not verbose else "%(levelname)s %(name)s: %(message)s")
    # torch configures its own loggers during import; a Ctrl-C that lands mid-import leaves them on ours,
    # and torch's exit hook then prints its cache statistics after "interrupted".
    for noisy in ("matplotlib", "PIL", "torch"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _exit_interrupted() -> None:
    """Exit 130 after Ctrl-C, every ``finally`` already run. Not through ``sys.exit``: when the SIGINT lands
    while a framework runs Python code through the C API (pybind11's exec), CPython marks the interrupt as
    unhandled, even though it was handled here, and at exit kills itself with SIGINT (status -2, seen under
    load in `export --int8`)."""
    import os

    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(130)


class EdgekitGroup(click.Group):
    """Turns EdgekitError into one clean line (and the documented exit code) unless -v is given."""

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except EdgekitError as exc:
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            click.echo(f"error: {exc}", err=True)
            sys.exit(exc.exit_code)
        except OSError as exc:  # a write or read the library did not expect to fail: a full disk, a vanished folder
            if ctx.obj and ctx.obj.get("verbose"):
                raise
            where = f" {exc.filename}" if exc.filename else ""
            click.echo(f"error:{where}: {exc.strerror or exc}", err=True)
            sys.exit(1)
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            _exit_interrupted()


@click.group(cls=EdgekitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
@click.option("-v", "--verbose", is_flag=True, help="Debug logging and full tracebacks.")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """edgekit: train, quantize and deploy small vision models on CPUs and Raspberry Pis.

    \b
    Start with:   edgekit demo
    Train:        edgekit train --data DIR_OR_CSV --model mobilenet_v2
    Quantize:     edgekit quantize runs/train/model.pt --data DIR_OR_CSV
    Export:       edgekit export runs/train/model.pt --format onnx --int8 [--bundle pi]
    Compare:      edgekit bench model.onnx model_int8.onnx
    Camera:       edgekit run --model model_int8.onnx --source 0 --serve :8080
    Meeting:      edgekit serve  /  edgekit join --server HOST:7700 --name NAME --model M.onnx
    """
    ctx.obj = {"verbose": verbose}
    _setup_logging(verbose)


def ctrl_c_interrupts() -> None:
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


def need_torch() -> None:
    installed("torch", "train", "training and PyTorch quantization")
    installed("torchvision", "train", "the model zoo")
