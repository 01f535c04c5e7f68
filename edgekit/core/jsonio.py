"""Strict JSON out: every file edgekit writes parses with any JSON reader; and whole-or-nothing file writes.

Python's json module writes NaN and Infinity as bare tokens that strict parsers (JavaScript's JSON.parse,
Go, jq in strict mode) reject. edgekit writes a non-finite number as null instead (a metric that is
undefined, such as ROC-AUC with one class present), and refuses any other NaN token by construction.
"""
from __future__ import annotations

import json
import math
from typing import Any


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float replaced by None (dicts, lists and tuples walked)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [finite(v) for v in obj]
    return obj


def dumps(obj: Any, **options) -> str:
    """json.dumps with non-finite numbers as null and NaN tokens refused."""
    return json.dumps(finite(obj), allow_nan=False, **options)


def write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` through a temporary file in the same folder and a rename: a full disk or a
    crash leaves the old file (or none), never an empty or half-written one. Errors are one-line WriteErrors."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path, data: bytes) -> None:
    """:func:`write_text` for bytes (an image, a grid snapshot)."""
    import os
    import tempfile
    from pathlib import Path

    from edgekit.core.errors import writing

    path = Path(path)
    tmp = None
    try:
        with writing(path):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
            with os.fdopen(fd, "wb") as handle:
                handle.write(data)
            os.chmod(tmp, 0o644)
            os.replace(tmp, path)
            tmp = None
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def write(path, obj: Any, **options) -> None:
    """Strict JSON of ``obj`` (see :func:`dumps`) written with :func:`write_text`, ending in a newline."""
    write_text(path, dumps(obj, **options) + "\n")
