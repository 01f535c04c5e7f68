"""What the CPU can do, read from /proc/cpuinfo (Linux) without importing any ML framework.

INT8 recipes depend on it: x86 CPUs without VNNI multiply u8 x s8 pairs into saturating 16-bit sums, so
their activations are quantized to 7 bits (``reduce_range``); VNNI, AMX and ARM's dot-product
instructions accumulate in 32 bits and take full 8-bit activations.
"""
from __future__ import annotations

import platform
import resource
import sys
from functools import lru_cache
from pathlib import Path

@lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return frozenset()


def is_arm() -> bool:
    return platform.machine().lower() in ("aarch64", "arm64", "armv7l", "armv8l")


def has_int8_dot_product() -> bool:
    """True where 8-bit products accumulate in 32 bits (VNNI, AMX, ARM dot product)."""
    flags = cpu_flags()
    return bool(flags & {"avx512_vnni", "avx_vnni", "amx_int8", "asimddp"}) or is_arm()


def _proc_status_mb(field: str, pid: int | str = "self") -> float | None:
    """A memory line of /proc/<pid>/status (Linux) in MB, or None where there is none."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def available_memory_mb() -> float | None:
    """Memory the system can still give (Linux MemAvailable), or None where /proc/meminfo is missing."""
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return None


def current_rss_mb(pid: int | str = "self") -> float | None:
    """Resident memory of a process (this one by default) now (Linux VmRSS; None elsewhere)."""
    return _proc_status_mb("VmRSS", pid)


def peak_rss_mb() -> float:
    """Peak resident memory of this process. Linux: VmHWM, which starts afresh at exec; ru_maxrss would
    be at least the *parent's* peak, because Linux carries it across fork + exec."""
    peak = _proc_status_mb("VmHWM")
    if peak is not None:
        return peak
    # macOS and others: ru_maxrss (bytes on macOS, KiB elsewhere).
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)
