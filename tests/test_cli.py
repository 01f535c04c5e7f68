"""The real `edgekit` entry point in subprocesses: help without torch, and one clean line for bad input."""
import shutil
import subprocess
import sys

import pytest

from conftest import run_cli

SUBCOMMANDS = ("train", "quantize", "demo")


def test_help_of_every_command_works_without_importing_torch():
    code = (
        "import sys\n"
        "from edgekit.cli import cli\n"
        "names = [None, *sorted(cli.commands)]\n"
        "for name in names:\n"
        "    args = ['--help'] if name is None else [name, '--help']\n"
        "    try:\n"
        "        cli.main(args, prog_name='edgekit', standalone_mode=False)\n"
        "    except SystemExit as exc:\n"
        "        assert exc.code in (0, None), (name, exc.code)\n"
        "heavy = [m for m in ('torch', 'torchvision', 'onnxruntime', 'openvino', 'matplotlib') if m in sys.modules]\n"
        "print('COMMANDS', ' '.join(sorted(cli.commands)))\n"
        "print('HEAVY', heavy)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "HEAVY []" in proc.stdout
    commands = proc.stdout.split("COMMANDS ")[1].split("\n")[0].split()
    assert set(SUBCOMMANDS) <= set(commands)
    assert "Usage: edgekit train" in proc.stdout and "--calib-batches" in proc.stdout


def assert_one_clean_line(proc, *fragments):
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert lines and lines[-1].startswith("error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for fragment in fragments:
        assert fragment in lines[-1], lines[-1]


def test_missing_data_dir(tmp_path):
    proc = run_cli("train", "--data", str(tmp_path / "nope"), "--weights", "none", "--out", str(tmp_path / "o"))
    assert_one_clean_line(proc, "data not found", "nope")
    assert proc.returncode == 2
    assert not (tmp_path / "o").exists()


def test_unknown_model_suggests_the_close_name(tmp_path, image_folder):
    proc = run_cli("train", "--data", str(image_folder), "--model", "mobilenet_v22", "--out", str(tmp_path))
    assert_one_clean_line(proc, "mobilenet_v22", "Did you mean 'mobilenet_v2'")


def test_empty_class_folder(tmp_path, image_folder):
    root = tmp_path / "data"
    shutil.copytree(image_folder, root)
    (root / "empty_class").mkdir()
    proc = run_cli("train", "--data", str(root), "--weights", "none", "--out", str(tmp_path / "o"))
    assert_one_clean_line(proc, "empty_class has no images")


def test_truncated_checkpoint(tmp_path, trained, mini_data):
    broken = tmp_path / "model.pt"
    broken.write_bytes(trained["checkpoint"].read_bytes()[:5000])
    proc = run_cli("quantize", str(broken), "--data", str(mini_data))
    assert_one_clean_line(proc, str(broken))
    assert not (tmp_path / "model_int8.pt").exists()


def test_file_that_is_not_an_edgekit_checkpoint(tmp_path, mini_data):
    import torch

    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    proc = run_cli("quantize", str(other), "--data", str(mini_data))
    assert_one_clean_line(proc, "not an edgekit checkpoint")


def test_missing_checkpoint(tmp_path, mini_data):
    proc = run_cli("quantize", str(tmp_path / "absent.pt"), "--data", str(mini_data))
    assert_one_clean_line(proc, "absent.pt")


@pytest.mark.parametrize("args, fragment", [
    (("train", "--data", "X", "--epochs", "0"), "epochs"),
    (("quantize", "M", "--data", "X", "--mode", "int4"), "Invalid value for '--mode'"),
])
def test_bad_option_values_are_rejected_before_any_work(args, fragment):
    proc = run_cli(*args)
    assert proc.returncode == 2
    assert fragment in proc.stderr and "Traceback" not in proc.stderr
