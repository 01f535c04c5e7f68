"""Strict JSON out: every file edgekit writes parses with any JSON reader.

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
