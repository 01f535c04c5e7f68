"""What an exported model is on disk: its files, its precision and its spec.

Every artifact carries the model spec twice: inside the file (ONNX ``metadata_props`` / OpenVINO
``rt_info``) and in a ``<file name>.edgekit.json`` sidecar (``model.onnx.edgekit.json``) that the standard library alone can read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from edgekit.core.errors import BadInputError
from edgekit.core.spec import ModelSpec

SIDECAR_SUFFIX = ".edgekit.json"
# An export writes into a staging folder in the output folder, marked with the exporting process's id, and moves
# only verified files out of it. Runtimes refuse files inside one (unless they are that process).
STAGE_PREFIX = ".edgekit-export-"
OWNER_FILE = ".edgekit-owner-pid"


def unverified_stage(model_path: Path) -> bool:
    """True for a file in another process's (or a killed export's) staging folder."""
    import os

    folder = Path(model_path).parent
    if not folder.name.startswith(STAGE_PREFIX):
        return False
    try:
        return (folder / OWNER_FILE).read_text().strip() != str(os.getpid())
    except OSError:
        return True
METADATA_KEY = "edgekit.spec"  # ONNX metadata_props key
RT_INFO_PATH = ["edgekit", "spec"]  # OpenVINO rt_info path


@dataclass
class Artifact:
    format: str  # "onnx" or "openvino"
    precision: str  # "fp32", "fp16" or "int8"
    path: Path  # the file a runtime opens (.onnx or .xml)
    spec: ModelSpec
    files: list[Path] = field(default_factory=list)  # every file that belongs to it, sidecar included
    seconds: float = 0.0
    notes: dict = field(default_factory=dict)

    @property
    def size_bytes(self) -> int:
        return sum(f.stat().st_size for f in self.files if f.exists() and f.suffix != ".json")

    @property
    def label(self) -> str:
        return f"{'ONNX' if self.format == 'onnx' else 'OpenVINO'} {self.precision.upper()}"


def sidecar_path(model_path: Path) -> Path:
    return model_path.with_name(model_path.name + SIDECAR_SUFFIX)


def write_sidecar(model_path: Path, spec: ModelSpec, artifact: dict) -> Path:
    path = sidecar_path(model_path)
    path.write_text(json.dumps({"spec": spec.to_dict(), "artifact": artifact}, indent=2, sort_keys=True) + "\n")
    return path


def read_sidecar(model_path: str | Path) -> tuple[ModelSpec, dict]:
    """The spec and artifact facts of an exported model, from its sidecar."""
    path = sidecar_path(Path(model_path))
    if not path.is_file():
        raise BadInputError(f"{model_path} has no {path.name} next to it (export it with `edgekit export`)")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise BadInputError(f"cannot read {path}: {exc}") from exc
    if not isinstance(data, dict) or "spec" not in data:
        raise BadInputError(f"{path} is not an edgekit sidecar (no 'spec')")
    return ModelSpec.from_dict(data["spec"]), data.get("artifact", {})


def rt_info_spec(model) -> ModelSpec | None:
    """The spec export wrote into an ``openvino.Model``'s rt_info, if any (the model object is passed in:
    this module never imports openvino)."""
    if not model.has_rt_info(RT_INFO_PATH):
        return None
    return ModelSpec.from_json(model.get_rt_info(RT_INFO_PATH).astype(str))
