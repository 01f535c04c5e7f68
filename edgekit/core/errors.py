"""Errors a user can act on.

Every error that reaches the CLI is an :class:`EdgekitError`; the CLI prints its message as one line and
exits non-zero (``-v`` shows the traceback). Library code raises these instead of ``assert`` so that a
missing file, an unknown name or a corrupt artifact never surfaces as a wall of framework internals.
"""
from __future__ import annotations

import difflib
from typing import Iterable


class EdgekitError(Exception):
    """Base class: the message is written for the user, in one line."""

    exit_code = 1


class BadInputError(EdgekitError):
    """A file, folder or value given by the user is missing, corrupt or of the wrong shape."""

    exit_code = 2


class UnknownNameError(EdgekitError):
    """A name (model, format, runtime, ...) that is not registered; suggests the closest ones."""

    exit_code = 2

    def __init__(self, kind: str, name: str, known: Iterable[str]):
        known = sorted(known)
        close = difflib.get_close_matches(name, known, n=3, cutoff=0.5)
        hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
        super().__init__(f"unknown {kind} {name!r}.{hint} Known: {', '.join(known)}.")
        self.name = name
        self.suggestions = close


class MissingExtraError(EdgekitError):
    """An optional dependency is not installed; names the exact extra to install."""

    exit_code = 3

    def __init__(self, package: str, extra: str, purpose: str = ""):
        what = f" (needed for {purpose})" if purpose else ""
        super().__init__(f"{package} is not installed{what}. Install it with: pip install \"edgekit[{extra}]\"")
        self.package = package
        self.extra = extra


def installed(module: str, extra: str, purpose: str = "") -> None:
    """Check that ``module`` is installed without importing it (torch takes seconds to import: commands check
    their input first and import it when they need it); raise :class:`MissingExtraError` when it is not."""
    import importlib.util

    if importlib.util.find_spec(module) is None:
        raise MissingExtraError(module, extra, purpose)


def require(module: str, extra: str, purpose: str = ""):
    """Import ``module`` or raise :class:`MissingExtraError` naming the extra that provides it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        # Only a missing top-level package is the user's to fix with an extra; a broken install is not.
        if exc.name and exc.name.split(".")[0] == module.split(".")[0]:
            raise MissingExtraError(module.split(".")[0], extra, purpose) from exc
        raise


class WriteError(EdgekitError):
    """A file could not be written: a full disk, a read-only folder, a quota."""

    exit_code = 1


def write_failure(path, exc: BaseException) -> WriteError:
    """One line for a failed write. Frameworks report a full disk in their own words (torch and OpenVINO:
    "basic_ios::clear: iostream error"), so the free space of the folder is checked and named."""
    import os
    import shutil

    folder = os.path.dirname(os.path.abspath(str(path))) or "."
    try:
        free = shutil.disk_usage(folder).free
    except OSError:
        free = None
    reason = getattr(exc, "strerror", None) or str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__
    if free is not None and free < 1 << 20:
        reason = f"no space left on the device ({free // 1024} KB free in {folder})"
    return WriteError(f"cannot write {path}: {reason}")


class writing:  # noqa: N801  (used as a context manager: `with writing(path):`)
    """Turn OSError and the frameworks' RuntimeError from a write into a :class:`WriteError` naming ``path``."""

    def __init__(self, path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, kind, exc, tb):
        if exc is not None and isinstance(exc, (OSError, RuntimeError)) and not isinstance(exc, EdgekitError):
            raise write_failure(self.path, exc) from exc
        return False
