"""edgekit: take a small vision model from training to a CPU, laptop or Raspberry Pi.

The package is split into sub-packages that map to the repository's top-level folders
(``edgekit.training`` = ``training/``, ``edgekit.runtimes`` = ``runtimes/``, ...). Importing ``edgekit``
imports nothing heavy: torch, onnxruntime and openvino are imported inside the functions that need them.
"""
__version__ = "0.1.0"
