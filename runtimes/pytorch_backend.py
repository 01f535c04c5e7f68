"""PyTorch backend: edgekit checkpoints (FP32, or INT8 from `edgekit quantize`) in eager mode."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from edgekit.core.errors import require
from edgekit.runtimes.base import RuntimeOptions, check_input, concurrent_throughput


class PyTorchRuntime:
    name = "pytorch"

    def load(self, path: Path, options: RuntimeOptions) -> None:
        torch = require("torch", "train", "the PyTorch runtime")
        from edgekit.models.checkpoint import load_checkpoint
        from edgekit.models.loading import load_model

        if options.threads:
            torch.set_num_threads(options.threads)  # process-wide: torch has no per-model setting
        checkpoint = load_checkpoint(path)
        self.spec = checkpoint.spec
        self.model = load_model(checkpoint)
        self.path, self.options, self.version = path, options, str(torch.__version__)

    def infer(self, batch: np.ndarray) -> np.ndarray:
        import torch

        from edgekit.models.loading import quiet_torch_ao

        check_input(batch, self.spec)
        with torch.inference_mode(), quiet_torch_ao():
            return self.model(torch.from_numpy(batch)).numpy()

    def throughput(self, batch: np.ndarray, requests: int, seconds: float) -> tuple[int, float]:
        # torch releases the GIL inside its operators; its intra-op pool is shared by the threads.
        return concurrent_throughput(self.infer, batch, requests, seconds)

    def describe(self) -> dict[str, Any]:
        import torch

        return {"runtime": self.name, "version": self.version, "format": "pytorch", "precision": self.spec.precision,
                "threads": torch.get_num_threads(), "engine": self.spec.quantization.get("engine"),
                "mode": "eager"}

    def close(self) -> None:
        self.model = None
