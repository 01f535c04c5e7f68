"""edgekit: take a small vision model from training to a CPU, laptop or Raspberry Pi.

The package is split into layers (docs/architecture.md): ``edgekit.core`` (spec, errors, data, artifacts;
torch-free), ``edgekit.models`` (registry, checkpoints), then the repository's top-level folders
(``edgekit.runtimes`` = ``runtimes/``, ``edgekit.training`` = ``training/``, ...) and the CLI. Importing
``edgekit`` imports nothing heavy: torch, onnxruntime and openvino are imported inside the functions that
need them.
"""
__version__ = "0.1.0"
