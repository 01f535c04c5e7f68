"""Range checks for config objects: every config validates itself when it is built, so the library refuses
what the CLI refuses, before any work whose cost the number controls. Names are the CLI option names
(``--threads``), which is also what a library user sees in the message."""
from __future__ import annotations

import math
import os

from edgekit.core.errors import BadInputError


def usable_cpus() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def max_threads() -> int:
    """More threads than 4 per usable core only make a machine thrash (10,000 made 20,002 threads)."""
    return 4 * usable_cpus()


def at_least(name: str, value, low) -> None:
    if not isinstance(value, (int, float)) or isinstance(value, bool) or math.isnan(value) or value < low:
        raise BadInputError(f"{name} must be >= {low}, got {value!r}")


def within(name: str, value, low, high, *, low_open: bool = False) -> None:
    """``low <= value <= high`` (``low < value`` with ``low_open``); NaN and non-numbers are refused."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value) and \
        (value > low if low_open else value >= low) and value <= high
    if not ok:
        raise BadInputError(f"{name} must be in {'(' if low_open else '['}{low}, {high}], got {value!r}")


def threads(name: str, value: int, allow_default: bool = True) -> None:
    """A thread count: 1 .. 4x the usable cores (0 = the library's default, where allowed)."""
    within(name, value, 0 if allow_default else 1, max_threads())


def port(name: str, value: int) -> None:
    """A TCP port; 0 asks the system for a free one."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 65535:
        raise BadInputError(f"{name} must be a port number in [0, 65535], got {value!r}")


def one_of(name: str, value, allowed) -> None:
    if value not in allowed:
        raise BadInputError(f"{name} must be one of {', '.join(map(str, allowed))}, got {value!r}")


def writable_file(name: str, path) -> None:
    """An output file the command will write at the end: its folder must exist and be writable and the path
    must not be a folder. Checked before the work, so a long run cannot end in a write error."""
    from pathlib import Path

    if path is None:
        return
    target = Path(path)
    folder = target.parent if str(target.parent) else Path(".")
    if target.is_dir():
        raise BadInputError(f"{name} {target} is a folder; give a file name")
    if not folder.is_dir():
        raise BadInputError(f"{name} {target}: folder {folder} does not exist")
    if not os.access(folder, os.W_OK | os.X_OK) or (target.exists() and not os.access(target, os.W_OK)):
        raise BadInputError(f"{name} {target}: not writable")
