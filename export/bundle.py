"""`edgekit export --bundle pi`: everything a Raspberry Pi (64-bit OS) needs to run the exported ONNX models
with onnxruntime and nothing heavier.

    OUT/models/*.onnx (+ .edgekit.json specs)   the exported models
    OUT/wheels/edgekit-*.whl                   edgekit itself (pure Python, any architecture)
    OUT/requirements.txt                       the device's packages, pinned to the versions tested here
    OUT/install.sh, OUT/run.sh, OUT/README.md  install into a venv, run the camera app, what to check

The pins are this machine's versions of the torch-free runtime stack; PyPI has aarch64 wheels of each, and
``benchmarks/pi_emulated.sh`` installs exactly this file in an emulated aarch64 Debian and runs the models.
"""
from __future__ import annotations

import subprocess
import sys
from importlib import metadata
from pathlib import Path

from edgekit.core.errors import BadInputError

DEVICE_PACKAGES = ("onnxruntime", "numpy", "opencv-python-headless", "click", "tqdm")

# The Pythons a device may have: Raspberry Pi OS bullseye has 3.9, bookworm 3.11, trixie 3.13.
DEVICE_PYTHONS = ("3.9", "3.10", "3.11", "3.12", "3.13")
# Where this machine's version of a package does not install on a device's Python, the newest release that
# does (wheels for aarch64 and x86_64; installed and run by benchmarks/python_versions.sh on each Python).
OLDER_PYTHON_PINS = {
    "onnxruntime": {"3.9": "1.19.2", "3.10": "1.23.2"},
    "numpy": {"3.9": "2.0.2", "3.10": "2.2.6"},
    "click": {"3.9": "8.1.8"},
}
# Where an ARM device gets another version than this machine's: the newest opencv-python-headless whose aarch64
# wheel does not carry the AV1 and AVIF codecs (libaom, libavif: 4.12 and later), 13 MB less on the device;
# the emulated Pi runs (benchmarks/pi_emulated.sh) check its labels against this machine's.
AARCH64_PINS = {"opencv-python-headless": "4.11.0.86"}


def pinned_requirements() -> list[str]:
    """requirements.txt lines: this machine's versions of the device packages, for every Python in
    DEVICE_PYTHONS that they support (their Requires-Python), OLDER_PYTHON_PINS for the others, each line with
    an environment marker so that pip on the device picks the one for its Python."""
    from packaging.specifiers import SpecifierSet

    lines = []
    for name in DEVICE_PACKAGES:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            raise BadInputError(f"--bundle pi pins the versions installed here, and {name} is not installed "
                                f"(pip install 'edgekit[onnx]')") from None
        supported = SpecifierSet(metadata.metadata(name).get("Requires-Python") or "")
        per_python = {}
        for python in DEVICE_PYTHONS:
            if f"{python}.0" in supported:
                per_python[python] = version
            elif python in OLDER_PYTHON_PINS.get(name, {}):
                per_python[python] = OLDER_PYTHON_PINS[name][python]
            else:
                raise BadInputError(f"--bundle pi: {name} {version} (installed here) needs Python {supported}, and "
                                    f"no version for Python {python} is known; add one to OLDER_PYTHON_PINS")
        if name in AARCH64_PINS:
            lines += [f'{name}=={AARCH64_PINS[name]}; platform_machine == "aarch64"']
            for line in _marked(name, per_python):
                pin, _, marker = line.partition("; ")
                lines.append(f'{pin}; ({marker}) and platform_machine != "aarch64"' if marker
                             else f'{pin}; platform_machine != "aarch64"')
        else:
            lines += _marked(name, per_python)
    return lines


def device_requirements(lines: list[str], machine: str, python: str) -> list[str]:
    """``name==version`` for the requirement lines that apply on a device with this machine and Python (pip
    evaluates environment markers for the machine it runs on, not for its --platform/--python-version)."""
    from packaging.requirements import Requirement

    device = {"platform_machine": machine, "python_version": python, "python_full_version": f"{python}.0"}
    chosen = []
    for line in lines:
        if line.strip() and not line.startswith("#"):
            req = Requirement(line)
            if req.marker is None or req.marker.evaluate(device):
                chosen.append(f"{req.name}{req.specifier}")
    return chosen


def _marked(name: str, per_python: dict[str, str]) -> list[str]:
    """One line per version; the newest Python's version also covers Pythons after DEVICE_PYTHONS."""
    versions = list(dict.fromkeys(per_python.values()))
    if len(versions) == 1:
        return [f"{name}=={versions[0]}"]
    lines = []
    for version in versions:
        pythons = [python for python, v in per_python.items() if v == version]
        if pythons[-1] == DEVICE_PYTHONS[-1]:
            marker = f'python_version >= "{pythons[0]}"'
        else:
            marker = " or ".join(f'python_version == "{python}"' for python in pythons)
        lines.append(f"{name}=={version}; {marker}")
    return lines


def source_tree() -> Path:
    root = Path(__file__).resolve().parents[1]
    if not (root / "pyproject.toml").is_file():
        raise BadInputError("--bundle pi builds edgekit's wheel from its source checkout; this edgekit is installed "
                            "without one (pip install -e from a clone)")
    return root


def build_wheel(out: Path) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("edgekit-*.whl"):
        old.unlink()
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(source_tree())], capture_output=True, text=True)
    wheels = list(out.glob("edgekit-*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise BadInputError(f"building edgekit's wheel failed (needs setuptools and wheel): {last}")
    return wheels[0]


INSTALL = """#!/usr/bin/env bash
# Install the device environment: a venv with onnxruntime, numpy, OpenCV and edgekit; no torch.
# Running it again (after copying an updated bundle) replaces edgekit with this bundle's wheel.
# SYSTEM_PACKAGES=1 bash install.sh: numpy and OpenCV from apt instead of PyPI (a smaller venv).
# PYTHON=python3.13 bash install.sh: the venv's Python (3.9 to 3.13; requirements.txt pins per Python).
# An SD card is small: no .pyc files are written ahead (Python writes those it imports), pip keeps no cache
# of the wheels, the files inference never uses are removed after pip (about 46 MB on aarch64: onnxruntime's
# C API library, numpy's tests, unused OpenCV cascades; `python -m edgekit.export.device_trim` lists them;
# TRIM=0 keeps them), and pip itself leaves the venv at the end (this script brings it back when it runs again;
# KEEP_PIP=1 keeps it).
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV=${VENV:-$HOME/edgekit-venv}
PYTHON=${PYTHON:-python3}
# --no-compile as an option: pip reads PIP_NO_COMPILE=1 as "compile" (a boolean --no-* option set from the
# environment is inverted), which wrote 24 MB of .pyc for modules nothing imports.
export PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
# Every pip runs as "$VENV/bin/python -m pip": a bare `pip` missing from the venv would be found further up
# PATH and change another environment.
venv() {
  [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$@" "$VENV"
  "$VENV/bin/python" -m pip --version >/dev/null 2>&1 || "$VENV/bin/python" -m ensurepip --default-pip >/dev/null
}
pip() { if [ "$1" = install ]; then shift; set -- install --no-compile "$@"; fi; "$VENV/bin/python" -m pip "$@"; }
if [ "${SYSTEM_PACKAGES:-0}" = 1 ]; then
  # numpy and OpenCV from the distribution (python3-numpy, python3-opencv): they share the system's FFmpeg
  # and BLAS, the common way on a Pi; the venv then holds onnxruntime, click, tqdm and edgekit only.
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -q
  $SUDO apt-get install -y -q python3-numpy python3-opencv
  venv --system-site-packages
  grep -vE "^(numpy|opencv-python-headless)==" "$HERE/requirements.txt" > "$VENV/edgekit-requirements.txt"
  pip install -r "$VENV/edgekit-requirements.txt"
else
  venv
  pip install -r "$HERE/requirements.txt"
fi
pip install --no-deps --force-reinstall "$HERE"/wheels/edgekit-*.whl
if [ "${TRIM:-1}" = 1 ]; then
  # -I: not from the current folder (a clone of edgekit there would shadow the installed package)
  "$VENV/bin/python" -I -m edgekit.export.device_trim
fi
"$VENV/bin/edgekit" doctor "$HERE/models/%(model)s"
if [ "${KEEP_PIP:-0}" != 1 ]; then
  pip uninstall -y -q pip setuptools  # setuptools may not be there (Python 3.12+): pip only warns
fi
"""

RUN = """#!/usr/bin/env bash
# The camera app on this device: bash run.sh [SOURCE] [more edgekit run options]; watch on http://PI:8080/
# from another machine, signing in with the viewer token printed at start (or set EDGEKIT_VIEWER_TOKEN).
# SERVE=127.0.0.1:8080 keeps the stream on the Pi itself. A SOURCE path is read from where you run this.
# Results go to ./edgekit-run (OUT=... to change); the annotated video is off on the device (an SD card fills
# at about 3 GB per hour of 720p MJPEG): RECORD=1 turns it on.
set -euo pipefail
HERE="$(cd "$(dirname "$0")" && pwd)"
VENV=${VENV:-$HOME/edgekit-venv}
VIDEO=--no-save-video
if [ "${RECORD:-0}" = 1 ]; then VIDEO=--save-video; fi
exec "$VENV/bin/edgekit" run --model "$HERE/models/%(model)s" --runtime onnxruntime --source "${1:-0}" \\
    --serve "${SERVE:-0.0.0.0:8080}" --out "${OUT:-edgekit-run}" "$VIDEO" "${@:2}"
"""

README = """# edgekit bundle for a Raspberry Pi (64-bit OS)

Models: %(models)s (labels and preprocessing are in each `.edgekit.json`).

1. Copy this folder to the Pi: `scp -r %(name)s pi@raspberrypi.local:`
2. On the Pi: `bash %(name)s/install.sh` (a venv in ~/edgekit-venv from `requirements.txt`: onnxruntime,
   numpy, opencv-python-headless, click, tqdm at the versions tested; aarch64 wheels from PyPI; no torch;
   147 MB in an emulated Pi). After pip it removes what inference never uses (onnxruntime's C API library,
   numpy's tests, OpenCV cascades edgekit does not load: about 46 MB; `TRIM=0` keeps everything).
   It ends with `edgekit doctor`, which checks the OS is 64-bit, the CPU's INT8 support, the camera and
   that the model loads and runs. `SYSTEM_PACKAGES=1 bash %(name)s/install.sh` takes numpy and OpenCV from
   the distribution (`python3-numpy`, `python3-opencv`, with sudo) instead: a smaller venv, and the system's
   own FFmpeg and BLAS. Picamera2 (`python3-picamera2`) is also a system package: use this mode for
   `--source picamera2`.
3. `bash %(name)s/run.sh` (camera 0) or `bash %(name)s/run.sh video.mp4`; open http://raspberrypi.local:8080/.
   Events and the summary go to `./edgekit-run/`; `RECORD=1 bash %(name)s/run.sh` also writes the annotated
   video (off by default: about 3 GB per hour on the SD card). Re-running `install.sh` after copying a newer
   bundle replaces edgekit.
4. Compare the precisions on this device: `edgekit bench %(name)s/models/*.onnx`. A Pi 4 (Cortex-A72) has no
   dot-product instructions, so INT8 may not beat FP32 there; a Pi 5 (Cortex-A76) has them. The INT8 model
   was made for %(target)s and checked on %(host)s, not on the Pi itself.

Requirements were pinned on %(host)s with Python %(python)s: one version per device Python (3.9 to 3.13, chosen
by environment markers), and on ARM the OpenCV release without the AV1/AVIF codecs (a smaller install).
"""


# What a device never uses: the demo's embedded data set (edgekit demo trains, which needs torch).
DEVICE_WHEEL_DROPS = ("edgekit/data/fashion-mnist-mini/",)


def slim_wheel(wheel: Path) -> int:
    """Rewrite ``wheel`` without DEVICE_WHEEL_DROPS (RECORD updated to match); returns bytes saved."""
    import zipfile

    before = wheel.stat().st_size
    slim = wheel.with_suffix(".slim")
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(slim, "w", zipfile.ZIP_DEFLATED) as dst:
        for item in src.infolist():
            if item.filename.startswith(DEVICE_WHEEL_DROPS):
                continue
            data = src.read(item)
            if item.filename.endswith(".dist-info/RECORD"):
                lines = data.decode().splitlines(keepends=True)
                data = "".join(line for line in lines if not line.startswith(DEVICE_WHEEL_DROPS)).encode()
            dst.writestr(item, data)
    slim.replace(wheel)
    return before - wheel.stat().st_size


def make_pi_bundle(out: Path, models: list[Path], target: str = "pi4") -> list[str]:
    """Write the bundle's files around ``out/models``; returns lines to print."""
    from edgekit.export.onnx_format import TARGETS

    import platform

    onnx = sorted(m for m in models if m.suffix == ".onnx")
    if not onnx:
        raise BadInputError("--bundle pi needs ONNX models: add --format onnx")
    main = next((m for m in onnx if "int8" in m.stem), onnx[0])
    requirements = pinned_requirements()
    wheel = build_wheel(out / "wheels")
    saved = slim_wheel(wheel)
    (out / "requirements.txt").write_text("# the device environment (no torch); pinned to the versions tested\n"
                                          + "\n".join(requirements) + "\n")
    values = {"model": main.name, "models": ", ".join(f"`models/{m.name}`" for m in onnx), "name": out.name,
              "host": f"{platform.system()} {platform.machine()}", "python": platform.python_version(),
              "target": TARGETS.get(target, target)}
    for name, text in (("install.sh", INSTALL), ("run.sh", RUN), ("README.md", README)):
        (out / name).write_text(text % values)
        if name.endswith(".sh"):
            (out / name).chmod(0o755)
    return [f"bundle: {out}/ (models/, {wheel.relative_to(out)} without the demo data, {saved / 1e6:.1f} MB less; "
            "requirements.txt, install.sh, run.sh, README.md)",
            f"next: scp -r {out} pi@raspberrypi.local: && ssh pi@raspberrypi.local bash {out.name}/install.sh"]
