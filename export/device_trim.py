"""Remove from a device venv the files that `edgekit run` on a Raspberry Pi never uses.

The PyPI wheels a device installs carry more than inference needs: onnxruntime ships its C API library
next to the Python module that already contains the runtime, numpy its own test suites and build headers,
OpenCV seventeen Haar cascades of which edgekit loads two. On aarch64 these are 46 MB of a 192 MB
install (benchmarks/results/footprint.txt). The bundle's install.sh runs this module after pip (TRIM=0 keeps
everything) and then runs `edgekit doctor` on the bundle's model, so a trim that broke the install would stop
it there. Installing a package again with pip brings its files back.

Run as ``python -m edgekit.export.device_trim [SITE_PACKAGES] [--dry-run]`` (default: the site-packages of the
Python running it); torch-free, standard library only.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import sysconfig
from dataclasses import dataclass
from pathlib import Path

# The cascades edgekit loads (edge_apps/faces.py): faces and eyes.
KEPT_CASCADES = ("haarcascade_frontalface_alt2.xml", "haarcascade_eye.xml")


@dataclass(frozen=True)
class Rule:
    pattern: str  # a glob relative to site-packages ("**" crosses folders)
    why: str


RULES = (
    Rule("onnxruntime/capi/libonnxruntime.so*",
         "onnxruntime's C API library; the Python module (onnxruntime_pybind11_state) holds its own runtime "
         "and does not load it"),
    Rule("onnxruntime/transformers", "onnxruntime's transformer-model optimisation tools"),
    Rule("onnxruntime/quantization", "onnxruntime's quantization tools (INT8 models are made on the host)"),
    Rule("onnxruntime/tools", "onnxruntime's model conversion tools"),
    Rule("onnxruntime/datasets", "onnxruntime's example models"),
    Rule("numpy/**/tests", "numpy's own test suites"),
    Rule("numpy/f2py", "numpy's Fortran wrapper generator (a build tool)"),
    Rule("numpy/_core/include", "numpy's C headers (for building extensions)"),
    Rule("numpy/**/*.pyi", "numpy's type stubs (for type checkers)"),
    Rule("cv2/data/haarcascade_*.xml", f"OpenCV cascades edgekit does not load (it keeps {', '.join(KEPT_CASCADES)})"),
)


def _size(path: Path) -> int:
    if path.is_file() or path.is_symlink():
        return path.lstat().st_size
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def matches(site: Path) -> list[tuple[Path, Rule]]:
    """The files and folders under ``site`` that RULES remove (nested matches folded into their folder)."""
    found: dict[Path, Rule] = {}
    for rule in RULES:
        for path in sorted(site.glob(rule.pattern)):
            if path.name not in KEPT_CASCADES:
                found.setdefault(path, rule)
    return [(path, rule) for path, rule in found.items() if not any(parent in found for parent in path.parents)]


def trim(site: Path, dry_run: bool = False) -> dict[str, int]:
    """Remove what RULES match under ``site``; returns bytes removed per rule's pattern."""
    if not (site / "onnxruntime").is_dir():
        raise FileNotFoundError(f"{site}: no onnxruntime here; give the venv's site-packages folder")
    freed: dict[str, int] = {}
    for path, rule in matches(site):
        size = _size(path)
        if not dry_run:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
        freed[rule.pattern] = freed.get(rule.pattern, 0) + size
    return freed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m edgekit.export.device_trim", description=__doc__.split("\n\n")[0])
    parser.add_argument("site", type=Path, nargs="?", default=Path(sysconfig.get_paths()["purelib"]),
                        help="the venv's site-packages folder (default: this Python's)")
    parser.add_argument("--dry-run", action="store_true", help="list what would go, remove nothing")
    args = parser.parse_args(argv)
    try:
        freed = trim(args.site, args.dry_run)
    except OSError as exc:  # FileNotFoundError included
        print(f"error: {exc}", file=sys.stderr)
        return 2
    verb = "would remove" if args.dry_run else "removed"
    by_pattern = {rule.pattern: rule.why for rule in RULES}
    for pattern, size in freed.items():
        print(f"  {size / 2**20:6.1f} MiB  {pattern}: {by_pattern[pattern]}")
    print(f"trim: {verb} {sum(freed.values()) / 2**20:.1f} MiB the device does not use (TRIM=0 keeps them)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
