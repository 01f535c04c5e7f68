"""Checkpoints: a torch file holding the weights *and* the model spec, written atomically.

Layout (a plain dict, loadable with ``torch.load(weights_only=True)``)::

    {"format": "edgekit-checkpoint/1", "spec": {...}, "model": {"arch", "head", ...},
     "state_dict": {...}, "history": [...], "metrics": {...}}

An INT8 checkpoint has the same layout; its ``spec.quantization`` says how to rebuild the quantized
module structure before loading the state dict (see :mod:`edgekit.training.quantize`).
"""
from __future__ import annotations

import os
import pickle
import tempfile
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgekit.core.errors import BadInputError, writing
from edgekit.core.spec import ModelSpec

CHECKPOINT_FORMAT = "edgekit-checkpoint/1"
# What torch.load raises for a truncated, corrupt or foreign file, across torch versions.
LOAD_ERRORS = (RuntimeError, EOFError, OSError, ValueError, KeyError, pickle.UnpicklingError, zipfile.BadZipFile)


@dataclass
class Checkpoint:
    spec: ModelSpec
    model: dict[str, Any]  # arch, head, ... : everything needed to rebuild the float module
    state_dict: dict[str, Any]
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)


def torch_versions() -> dict[str, str]:
    import torch
    import torchvision

    import edgekit

    return {"edgekit": edgekit.__version__, "torch": str(torch.__version__), "torchvision": str(torchvision.__version__)}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def save_checkpoint(path: str | Path, ckpt: Checkpoint) -> Path:
    """Write to a temporary file in the same folder, then rename: a crash never leaves half a file."""
    import torch

    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as exc:
        raise BadInputError(f"cannot write to {path.parent}: {exc.strerror}") from exc
    os.close(fd)
    payload = {"format": CHECKPOINT_FORMAT, "spec": ckpt.spec.to_dict(), "model": ckpt.model,
               "state_dict": ckpt.state_dict, "history": ckpt.history, "metrics": ckpt.metrics}
    try:
        with writing(path):
            torch.save(payload, tmp)
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; as readable as any file the user writes
            os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load_checkpoint(path: str | Path) -> Checkpoint:
    import warnings

    import torch

    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():
            # Quantized state dicts trip torch's own deprecation notices (storage, quantized tensors) on load.
            warnings.filterwarnings("ignore", message="TypedStorage is deprecated", category=UserWarning)
            warnings.filterwarnings("ignore", message=r"torch\.quantize_per_tensor", category=UserWarning)
            payload = torch.load(path, map_location="cpu", weights_only=True)
    except LOAD_ERRORS as exc:
        raise BadInputError(f"cannot read checkpoint {path}: truncated or not a torch file "
                            f"({type(exc).__name__})") from exc
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise BadInputError(f"{path} is not an edgekit checkpoint (no spec inside); "
                            f"train one with `edgekit train`")
    return Checkpoint(spec=ModelSpec.from_dict(payload["spec"]), model=payload["model"],
                      state_dict=payload["state_dict"], history=payload.get("history", []),
                      metrics=payload.get("metrics", {}))
