"""The built wheel installs every folder under the edgekit namespace, with the embedded data set."""
import os
import shutil
import subprocess
import sys
import zipfile

import pytest

from conftest import REPO


@pytest.fixture(scope="module")
def wheel(tmp_path_factory):
    """The wheel built from a clean copy of the work tree (what a fresh clone holds: tracked and new files, not
    ignored ones), so leftovers in a developer's build/ folder cannot end up in it."""
    source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO,
                            capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, listed):
        if (REPO / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                           "-w", str(out), str(source)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("edgekit-*.whl")
    return path


def test_wheel_contains_the_namespace_and_embedded_data(wheel):
    names = set(zipfile.ZipFile(wheel).namelist())
    for module in ("edgekit/cli.py", "edgekit/core/spec.py", "edgekit/models/loading.py", "edgekit/training/trainer.py",
                   "edgekit/training/quantize.py", "edgekit/export/__init__.py", "edgekit/runtimes/__init__.py",
                   "edgekit/edge_apps/__init__.py", "edgekit/benchmarks/__init__.py"):
        assert module in names, module
    data = [n for n in names if n.startswith("edgekit/data/fashion-mnist-mini/")]
    assert any(n.endswith("t10k-images-idx3-ubyte.gz") for n in data) and any(n.endswith("README.md") for n in data)
    assert not any(n.startswith(("training/", "export/", "tests/")) for n in names), "generic top-level names"
    assert not any(n.startswith("edgekit/tests/") for n in names), "the test suite is not shipped to devices"
    # the bench library only: the one-off scripts that regenerate results stay in the repository
    shipped = {n for n in names if n.startswith("edgekit/benchmarks/")}
    assert shipped == {"edgekit/benchmarks/__init__.py", "edgekit/benchmarks/harness.py",
                       "edgekit/benchmarks/worker.py"}, shipped
    assert not any(n.endswith((".sh", ".txt")) and n.startswith("edgekit/benchmarks") for n in names)


def test_installed_wheel_imports_and_finds_its_data(wheel, tmp_path):
    target = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target), str(wheel)],
                   check=True, capture_output=True, timeout=300)
    code = ("import edgekit, edgekit.core.data as d, edgekit.training.demo as demo\n"
            "table = d.load_table(demo.embedded_dataset())\n"
            "print(edgekit.__file__)\nprint(len(table))\n")
    env = {**os.environ, "PYTHONPATH": str(target)}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env,
                          timeout=120)
    assert proc.returncode == 0, proc.stderr
    location, count = proc.stdout.split()
    assert location.startswith(str(target))
    assert int(count) == 4000
