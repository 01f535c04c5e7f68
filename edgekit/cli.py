"""The `edgekit` command line.

Commands are thin: build a config, call one library function, print the result. Heavy imports (torch,
onnxruntime, openvino) happen inside command bodies, so `edgekit --help` starts in a blink and works on a
device without torch. Errors from edgekit arrive as one line and a non-zero exit; `-v` shows tracebacks.
The group and its error handling are in edgekit.group, the subcommands in edgekit.commands (train, quantize,
demo, export, verify), edgekit.model_commands (import, optimize), edgekit.bench_commands (bench) and
edgekit.app_commands (camera and meeting).
"""
from __future__ import annotations

from edgekit import app_commands, bench_commands, commands, model_commands  # noqa: F401  (register the subcommands)
from edgekit.group import cli


def main() -> None:
    cli(prog_name="edgekit")
