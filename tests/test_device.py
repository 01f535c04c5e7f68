"""The Raspberry Pi install on this machine: a fresh venv with only `edgekit[onnx]` (no torch, no openvino)
runs `edgekit run`, `edgekit bench` and `edgekit doctor` on exported ONNX models, and never tries to import
torch; `edgekit export --bundle pi` writes what such a device needs."""
import json
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

from conftest import REPO, free_port, run_cli

# Tier: builds a separate virtual environment (the device install).
pytestmark = pytest.mark.slow

# Installed as `torch` in the device venv: any attempt to import torch, in any process, leaves a marker.
TORCH_TRIPWIRE = """import os
open(os.environ["EDGEKIT_TORCH_TRIPWIRE"], "a").write("torch import attempted\\n")
raise ImportError("torch is not part of the device install")
"""


@pytest.fixture(scope="module")
def device_venv(tmp_path_factory):
    venv = tmp_path_factory.mktemp("device") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    python = venv / "bin" / "python"
    proc = subprocess.run([str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check",
                           f"{REPO}[onnx]"], capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    site = Path(subprocess.run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               capture_output=True, text=True, check=True).stdout.strip())
    (site / "torch").mkdir()
    (site / "torch" / "__init__.py").write_text(TORCH_TRIPWIRE)
    return venv


def device_cli(venv: Path, tripwire: Path, *args: str) -> subprocess.CompletedProcess:
    import os

    env = {**os.environ, "EDGEKIT_TORCH_TRIPWIRE": str(tripwire), "PATH": f"{venv / 'bin'}:{os.environ['PATH']}"}
    env.pop("PYTHONPATH", None)
    return subprocess.run([str(venv / "bin" / "edgekit"), *args], capture_output=True, text=True, env=env,
                          timeout=300, cwd=tripwire.parent)


def test_device_install_has_no_torch_or_openvino(device_venv):
    names = subprocess.run([str(device_venv / "bin" / "python"), "-m", "pip", "list", "--format=json"],
                           capture_output=True, text=True, check=True).stdout
    installed = {p["name"].lower() for p in json.loads(names)}
    assert {"edgekit", "onnxruntime", "numpy", "opencv-python-headless"} <= installed
    assert not installed & {"torch", "torchvision", "openvino", "nncf", "onnx"}


def test_run_bench_and_doctor_on_the_device_install_never_import_torch(device_venv, exported, tmp_path):
    import cv2
    import numpy as np

    out, _ = exported
    clip = tmp_path / "clip.avi"
    writer = cv2.VideoWriter(str(clip), cv2.VideoWriter_fourcc(*"MJPG"), 20, (96, 64))
    for i in range(30):
        image = np.full((64, 96, 3), 30, np.uint8)
        image[10:50, i:i + 30] = 200
        writer.write(image)
    writer.release()
    tripwire = tmp_path / "torch_imports.txt"
    run = device_cli(device_venv, tripwire, "run", "--model", str(out / "model_int8.onnx"), "--source", str(clip),
                     "--out", str(tmp_path / "run"))
    assert run.returncode == 0, run.stderr
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["frames"] == 30 and summary["runtime"]["runtime"] == "onnxruntime"
    bench = device_cli(device_venv, tripwire, "bench", str(out / "model.onnx"), str(out / "model_int8.onnx"),
                       "--min-runs", "5", "--min-seconds", "0.1", "--warmup", "1", "--json", str(tmp_path / "b.json"))
    assert bench.returncode == 0, bench.stderr
    rows = json.loads((tmp_path / "b.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", "ok"] and all(r["p50_ms"] > 0 for r in rows)
    doctor = device_cli(device_venv, tripwire, "doctor", str(out / "model_int8.onnx"), "--json",
                        str(tmp_path / "d.json"))
    assert doctor.returncode == 0, doctor.stdout + doctor.stderr
    checks = {c["name"]: c for c in json.loads((tmp_path / "d.json").read_text())}
    assert checks["model"]["status"] == "ok"
    assert not tripwire.exists(), tripwire.read_text()  # nothing even tried to import torch
    assert device_cli(device_venv, tripwire, "--help").returncode == 0 and not tripwire.exists()
    tried = subprocess.run([str(device_venv / "bin" / "python"), "-c", "import torch"], capture_output=True,
                           text=True, env={"EDGEKIT_TORCH_TRIPWIRE": str(tripwire)})
    assert tried.returncode != 0 and tripwire.exists()  # the tripwire itself works


def test_join_from_the_device_install(device_venv, binary_models, tmp_path):
    """`edgekit join` (attend app, ONNX Runtime) from the torch-free venv to a real `edgekit serve`."""
    import time

    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "edgekit", "serve", "--port", str(port), "--http", "off",
                               "--token", "t0k", "--duration", "60"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
    try:
        line = ""
        while server.poll() is None and "meeting on" not in line:
            line = server.stderr.readline()
        tripwire = tmp_path / "torch_imports.txt"
        started = time.monotonic()
        proc = device_cli(device_venv, tripwire, "join", "--server", f"127.0.0.1:{port}", "--name", "pi",
                          "--token", "t0k", "--model", str(binary_models["onnxruntime"]), "--source", "/dev/video99",
                          "--duration", "4", "--out", str(tmp_path / "join"))
    finally:
        server.terminate()
        server.wait(timeout=30)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((tmp_path / "join" / "summary.json").read_text())
    assert result["connects"] == 1 and result["sent"] > 0 and result["grids_received"] > 0
    assert time.monotonic() - started < 60 and not tripwire.exists()


def test_pi_bundle_holds_models_wheel_pinned_requirements_and_scripts(trained, mini_data, tmp_path):
    bundle = tmp_path / "bundle"
    proc = run_cli("export", str(trained["checkpoint"]), "--format", "onnx", "--int8", "--bundle", "pi",
                   "--out", str(bundle), "--data", str(mini_data), "--calib-size", "64", "--verify-images", "100")
    assert proc.returncode == 0, proc.stderr
    assert {p.name for p in (bundle / "models").iterdir()} == {
        "model.onnx", "model.onnx.edgekit.json", "model_int8.onnx", "model_int8.onnx.edgekit.json"}
    assert len(list((bundle / "wheels").glob("edgekit-*-py3-none-any.whl"))) == 1
    from packaging.requirements import Requirement

    from edgekit.export.bundle import DEVICE_PACKAGES, DEVICE_PYTHONS

    requirements = [Requirement(line) for line in (bundle / "requirements.txt").read_text().splitlines()
                    if not line.startswith("#")]
    assert all(str(r.specifier).startswith("==") for r in requirements)
    assert not {r.name for r in requirements} & {"torch", "openvino"}
    for python in DEVICE_PYTHONS + ("3.14",):  # each Python a device may have gets one pin of each package
        env = {"python_version": python, "python_full_version": python + ".0"}
        chosen = [r.name for r in requirements if r.marker is None or r.marker.evaluate(env)]
        assert sorted(chosen) == sorted(DEVICE_PACKAGES), (python, chosen)
    here = {"python_version": f"{sys.version_info.major}.{sys.version_info.minor}"}
    assert {f"{r.name}=={metadata.version(r.name)}" for r in requirements if r.marker is None or r.marker.evaluate(
        {**here, "python_full_version": here["python_version"] + ".0"})} == {f"{n}=={metadata.version(n)}" for n in DEVICE_PACKAGES}
    assert "models/model_int8.onnx" in (bundle / "run.sh").read_text()
    for script in ("install.sh", "run.sh"):
        assert subprocess.run(["bash", "-n", str(bundle / script)]).returncode == 0  # valid bash
    bad = run_cli("export", str(trained["checkpoint"]), "--format", "openvino", "--bundle", "pi", "--out",
                  str(tmp_path / "b2"))
    assert bad.returncode == 2 and "--bundle pi needs ONNX models" in bad.stderr.strip().splitlines()[-1]


def test_pi_bundle_scripts_work_as_a_user_runs_them(device_venv, trained, mini_data, clip, tmp_path):
    """The bundle's own install.sh and run.sh in the device venv: INT8 made for a Pi 4 by default (recorded),
    the wheel without the demo data, a re-run of install.sh replaces edgekit, and run.sh takes a video path
    relative to where the user runs it, with recording off."""
    import os
    import shutil
    import zipfile

    bundle = tmp_path / "bundle"
    proc = run_cli("export", str(trained["checkpoint"]), "--format", "onnx", "--int8", "--bundle", "pi",
                   "--out", str(bundle), "--data", str(mini_data), "--calib-size", "64", "--verify-images", "100")
    assert proc.returncode == 0, proc.stderr
    assert "INT8 made for Raspberry Pi 4" in proc.stdout  # checked here on x86, said so
    recipe = json.loads((bundle / "models" / "model_int8.onnx.edgekit.json").read_text())["spec"]["quantization"]
    assert recipe["target"] == "pi4" and recipe["overflow_fix"] == "disable"  # ARM kernels do not saturate
    wheel = next((bundle / "wheels").glob("edgekit-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    assert "edgekit/cli.py" in names and not any("fashion-mnist-mini" in n for n in names)
    env = {**os.environ, "VENV": str(device_venv)}
    env.pop("PYTHONPATH", None)
    install = subprocess.run(["bash", str(bundle / "install.sh")], env=env, cwd=tmp_path, capture_output=True,
                             text=True, timeout=900)
    assert install.returncode == 0, install.stdout[-2000:] + install.stderr[-2000:]
    # the device trim ran on the real wheels, and the doctor and run.sh below still work in what it left
    assert "trim: removed" in install.stdout
    site = next((device_venv / "lib").glob("python3*/site-packages"))
    assert not list(site.glob("onnxruntime/capi/libonnxruntime.so*")) and not list(site.glob("numpy/**/tests"))
    assert sorted(p.name for p in site.glob("cv2/data/*.xml")) == ["haarcascade_eye.xml",
                                                                  "haarcascade_frontalface_alt2.xml"]
    python = str(device_venv / "bin" / "python")
    assert subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode != 0  # pip left
    installed = Path(subprocess.run([str(device_venv / "bin" / "python"), "-c",
                                     "import edgekit.cli as c; print(c.__file__)"], capture_output=True, text=True,
                                    env=env, check=True, cwd=tmp_path).stdout.strip())
    installed.write_text(installed.read_text() + "\nTAMPERED = True\n")
    # run again from a clone's root, whose edgekit/ folder must not shadow the installed package
    again = subprocess.run(["bash", str(bundle / "install.sh")], env=env, cwd=REPO, capture_output=True,
                           text=True, timeout=900)
    assert again.returncode == 0 and "TAMPERED" not in installed.read_text(), again.stderr[-2000:]
    # pip came back for the second run and left again; nothing ran in the environment further up PATH (the
    # one running these tests: a bare `pip` would have replaced its edgekit and removed its pip)
    assert subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode != 0
    assert subprocess.run([sys.executable, "-c", "import edgekit.training, pip"]).returncode == 0
    subprocess.run([python, "-m", "ensurepip", "--default-pip"], check=True, capture_output=True)  # for later users
    user = tmp_path / "user"
    user.mkdir()
    shutil.copy(clip, user / "my clip.avi")
    run = subprocess.run(["bash", str(bundle / "run.sh"), "my clip.avi", "--max-frames", "10"], cwd=user,
                         env={**env, "SERVE": "127.0.0.1:0"}, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    summary = json.loads((user / "edgekit-run" / "summary.json").read_text())
    assert summary["frames"] == 10 and not (user / "edgekit-run" / "annotated.avi").exists()


def test_device_trim_removes_only_what_inference_never_uses(tmp_path):
    """The rules on a tree shaped like the device wheels: nested matches counted once, the cascades edgekit
    loads kept, a dry run removes nothing, and a folder that is not site-packages is refused in one line."""
    from edgekit.export.device_trim import KEPT_CASCADES, main, trim

    site = tmp_path / "site-packages"
    files = {"onnxruntime/capi/libonnxruntime.so.1.32.0": 1000, "onnxruntime/capi/onnxruntime_pybind11_state.so": 7,
             "onnxruntime/transformers/fusion.py": 50, "onnxruntime/__init__.py": 3,
             "numpy/_core/tests/test_a.py": 200, "numpy/f2py/tests/test_b.py": 30, "numpy/f2py/crackfortran.py": 40,
             "numpy/_core/multiarray.pyi": 5, "numpy/_core/multiarray.py": 9, "numpy/testing/__init__.py": 4,
             "cv2/data/haarcascade_smile.xml": 300, **{f"cv2/data/{name}": 11 for name in KEPT_CASCADES}}
    for name, size in files.items():
        (site / name).parent.mkdir(parents=True, exist_ok=True)
        (site / name).write_bytes(b"x" * size)
    assert sum(trim(site, dry_run=True).values()) == 1000 + 50 + 200 + 30 + 40 + 5 + 300
    assert all((site / name).exists() for name in files)
    freed = trim(site)
    assert freed["numpy/f2py"] == 70 and freed["numpy/**/tests"] == 200  # f2py's tests counted with f2py
    left = sorted(str(p.relative_to(site)) for p in site.rglob("*") if p.is_file())
    assert left == sorted(["onnxruntime/capi/onnxruntime_pybind11_state.so", "onnxruntime/__init__.py",
                           "numpy/_core/multiarray.py", "numpy/testing/__init__.py",
                           *(f"cv2/data/{name}" for name in KEPT_CASCADES)])
    assert sum(trim(site).values()) == 0  # again: nothing left to remove
    assert main([str(tmp_path)]) == 2  # no onnxruntime there


def test_bundle_requirements_give_arm_devices_the_lean_opencv():
    from edgekit.export.bundle import AARCH64_PINS, device_requirements, pinned_requirements

    for machine, python in (("aarch64", "3.9"), ("aarch64", "3.13"), ("x86_64", "3.11"), ("x86_64", "3.9")):
        chosen = device_requirements(pinned_requirements(), machine, python)
        opencv = [line for line in chosen if line.startswith("opencv-python-headless==")]
        expected = AARCH64_PINS["opencv-python-headless"] if machine == "aarch64" else metadata.version(
            "opencv-python-headless")
        assert opencv == [f"opencv-python-headless=={expected}"], (machine, python, opencv)
