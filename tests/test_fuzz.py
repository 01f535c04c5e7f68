"""Bad input against every command, as a table: each case must end with exit 1 or 2 (or 0 where succeeding is
right), one `error:` line or a clean failure, no Python traceback, no signal exit, within its time bound, and
leave no artifact behind. Add a case by adding a row to CASES; placeholders in braces name corpus files."""
from __future__ import annotations

import gzip
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

BAD_FILES = ("missing", "empty", "random", "truncated_pt", "foreign_pt", "text", "dir", "nan_spec_pt")
BAD_MODELS = BAD_FILES + ("text_onnx", "random_xml", "stage_onnx")
BAD_DATA = ("missing", "empty", "random", "text", "empty_dir", "one_class", "corrupt_images", "binary_csv",
            "csv_missing_column", "idx_truncated", "class_unreadable")
NUMBERS = ("-1", "0", "nan", "1e12", "abc", "99999999999999999999")


def _cases() -> list[tuple[str, tuple[str, ...], frozenset]]:
    rows: list[tuple[str, tuple[str, ...], frozenset]] = []
    bad = frozenset({1, 2})

    def add(name, args, codes=bad):
        rows.append((name, tuple(args), frozenset(codes)))

    for data in BAD_DATA:
        add(f"train-data-{data}", ["train", "--data", "{%s}" % data, "--weights", "none", "--epochs", "1",
                                   "--out", "{out}"])
    for option in ("--epochs", "--batch", "--lr", "--imgsz", "--threads", "--val-fraction", "--dropout"):
        for value in ("-1", "nan", "1e12"):
            add(f"train{option}={value}", ["train", "--data", "{data}", option, value, "--out", "{out}"])
    add("train-positive-unknown", ["train", "--data", "{binary_data}", "--positive", "nope", "--out", "{out}"])
    add("train-out-is-a-file", ["train", "--data", "{data}", "--weights", "none", "--epochs", "1", "--limit", "64",
                                "--out", "{text}"])
    for model in BAD_FILES:
        add(f"quantize-{model}", ["quantize", "{%s}" % model, "--data", "{data}"])
        add(f"export-{model}", ["export", "{%s}" % model, "--format", "onnx", "--out", "{out}"])
        add(f"export-int8-{model}", ["export", "{%s}" % model, "--format", "onnx", "--int8", "--data", "{data}",
                                     "--out", "{out}"])
        add(f"import-{model}", ["import", "{%s}" % model, "--out", "{out}"])
        add(f"prune-{model}", ["prune", "{%s}" % model, "--data", "{data}", "--out", "{out}"])
        add(f"train-teacher-{model}", ["train", "--data", "{data}", "--model", "small_cnn", "--teacher",
                                       "{%s}" % model, "--epochs", "1", "--limit", "64", "--out", "{out}"])
    for data in BAD_DATA:
        add(f"quantize-data-{data}", ["quantize", "{ckpt}", "--data", "{%s}" % data])
        add(f"export-calib-{data}", ["export", "{ckpt}", "--format", "onnx", "--int8", "--calib", "{%s}" % data,
                                     "--out", "{out}"])
        # a folder with one class folder is a set of unlabelled images: verifying agreement on it is right
        add(f"verify-data-{data}", ["verify", "{onnx}", "--reference", "{ckpt}", "--data", "{%s}" % data],
            {0} if data == "one_class" else bad)
    for value in ("-1", "0", "nan", "1e12", "abc"):
        add(f"prune-ratios={value}", ["prune", "{ckpt}", "--data", "{data}", "--ratios", value, "--out", "{out}"])
        add(f"train-kd-temperature={value}", ["train", "--data", "{data}", "--teacher", "{ckpt}", "--kd-temperature",
                                              value, "--out", "{out}"])
        add(f"quantize-qat-epochs={value}", ["quantize", "{ckpt}", "--data", "{data}", "--mode", "qat",
                                            "--qat-epochs", value])
    add("prune-ratios=1", ["prune", "{ckpt}", "--data", "{data}", "--ratios", "1", "--out", "{out}"])
    add("prune-ratios-repeated", ["prune", "{ckpt}", "--data", "{data}", "--ratios", "0.3,0.3", "--out", "{out}"])
    for value in NUMBERS:
        if value not in ("0", "99999999999999999999"):  # 0 = all images, and more than there are = all: fine
            add(f"export-verify-images={value}", ["export", "{ckpt}", "--verify-images", value, "--out", "{out}"])
        add(f"export-calib-size={value}", ["export", "{ckpt}", "--int8", "--calib-size", value, "--out", "{out}"])
        add(f"bench-threads={value}", ["bench", "{onnx}", "--threads", value])
        add(f"run-every={value}", ["run", "--model", "{onnx}", "--source", "{clip}", "--every", value, "--out", "{out}"])
        if value != "0":  # port 0 = any free port
            add(f"serve-port={value}", ["serve", "--port", value, "--duration", "1"])
    for model in BAD_MODELS:
        add(f"verify-{model}", ["verify", "{%s}" % model, "--reference", "{ckpt}", "--data", "{data}"])
        add(f"bench-{model}", ["bench", "{%s}" % model, "--min-runs", "1", "--min-seconds", "0"])
        add(f"run-{model}", ["run", "--model", "{%s}" % model, "--source", "{clip}", "--out", "{out}"])
        add(f"doctor-{model}", ["doctor", "{%s}" % model], {1, 2})
        add(f"join-model-{model}", ["join", "--server", "127.0.0.1:9", "--name", "x", "--model", "{%s}" % model,
                                    "--duration", "2"])
    for reference in BAD_FILES:
        add(f"verify-reference-{reference}", ["verify", "{onnx}", "--reference", "{%s}" % reference, "--data",
                                              "{data}"])
    for source in ("missing", "empty", "random", "text", "empty_dir", "corrupt_images"):
        add(f"run-source-{source}", ["run", "--model", "{onnx}", "--source", "{%s}" % source, "--out", "{out}"])
    for a, b in (("bad_json", "bad_json"), ("wrong_shape_json", "wrong_shape_json"), ("missing", "missing"),
                 ("empty", "random"), ("empty_rows_json", "empty_rows_json")):
        add(f"bench-compare-{a}-{b}", ["bench", "compare", "{%s}" % a, "{%s}" % b])
    for out in ("{ro_dir}/x.json", "{missing_dir}/x.json", "{dir}"):
        add(f"doctor-json-{out}", ["doctor", "--json", out])
        add(f"verify-json-{out}", ["verify", "{onnx}", "--reference", "{ckpt}", "--data", "{data}", "--images", "8",
                                   "--json", out])
        add(f"bench-json-{out}", ["bench", "{onnx}", "--min-runs", "1", "--min-seconds", "0", "--json", out])
        add(f"quantize-json-{out}", ["quantize", "{ckpt}", "--data", "{data}", "--json", out])
    for out in ("text", "ro_dir"):
        add(f"export-out-{out}", ["export", "{ckpt}", "--format", "onnx", "--out", "{%s}" % out])
        add(f"run-out-{out}", ["run", "--model", "{onnx}", "--source", "{clip}", "--out", "{%s}" % out])
        add(f"import-out-{out}", ["import", "{onnx}", "--labels", "{labels}", "--out", "{%s}" % out])
    for labels in ("missing", "empty", "random", "text"):
        add(f"import-labels-{labels}", ["import", "{plain_onnx}", "--labels", "{%s}" % labels, "--out", "{out}"])
    for args in (["--server", "127.0.0.1:99999"], ["--server", "nohost"], ["--server", "127.0.0.1:9", "--fps", "0"],
                 ["--server", "127.0.0.1:9", "--window", "0"], ["--server", "127.0.0.1:9", "--tls-ca", "{missing}",
                                                                "--tls"]):
        add(f"join-{'-'.join(args)[:40]}", ["join", *args, "--name", "x", "--model", "{onnx}", "--duration", "2",
                                            "--source", "{clip}"])
    for args in (["--tls-cert", "{missing}", "--tls-key", "{missing}"], ["--tls-cert", "{text}"],
                 ["--max-clients", "0"], ["--fps", "0"], ["--http", "nonsense"], ["--timeout", "nan"]):
        add(f"serve-{'-'.join(args)[:40]}", ["serve", *args, "--port", "0", "--duration", "1"])
    for args in (["--labels", "{missing}"], ["--labels", "{binary_csv}"], ["--fps", "0"], ["--size", "1"]):
        add(f"dataset-{'-'.join(args)[:40]}", ["dataset", "faces", "{empty_dir}", *args, "--out", "{out}"])
    for args in (["--max-drop", "2"], ["--calib", "{missing}"], ["--eval", "{empty_dir}"], ["--runtimes", "tflite"]):
        base = {"--calib": "{corrupt_images}", "--eval": "{data}"}
        pairs = dict(zip(args[::2], args[1::2]))
        merged = [x for k, v in {**base, **pairs}.items() if k in ("--calib", "--eval") for x in (k, v)]
        extra = [x for k, v in pairs.items() if k not in ("--calib", "--eval") for x in (k, v)]
        add(f"optimize-{'-'.join(args)[:40]}", ["optimize", "{ckpt}", *merged, *extra, "--out", "{out}"])
    return rows


CASES = _cases()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, trained, exported, mini_data, clip, binary_models):
    """The bad (and a few good) inputs the table's placeholders name."""
    import cv2
    import torch

    from edgekit.models.checkpoint import load_checkpoint

    root = tmp_path_factory.mktemp("corpus")
    rng = np.random.default_rng(0)
    files = {"missing": root / "does_not_exist.pt", "empty": root / "empty.pt", "random": root / "random.bin",
             "text": root / "notes.txt", "dir": root / "a_dir", "empty_dir": root / "empty_dir",
             # a place nobody can write, root included (chmod does not stop root)
             "ro_dir": Path("/proc/edgekit-read-only"), "missing_dir": root / "no" / "such" / "dir"}
    files["empty"].write_bytes(b"")
    files["random"].write_bytes(rng.integers(0, 256, 4096, dtype=np.uint8).tobytes())
    files["text"].write_text("hello\n")
    for name in ("dir", "empty_dir"):
        files[name].mkdir()
    checkpoint = trained["checkpoint"]
    files["truncated_pt"] = root / "truncated.pt"
    files["truncated_pt"].write_bytes(checkpoint.read_bytes()[:5000])
    files["foreign_pt"] = root / "foreign.pt"
    torch.save({"weights": torch.zeros(3)}, files["foreign_pt"])
    ckpt = load_checkpoint(checkpoint)
    spec = ckpt.spec.to_dict()
    spec["std"] = [float("nan")] * 3
    files["nan_spec_pt"] = root / "nan_spec.pt"
    torch.save({"format": "edgekit-checkpoint/1", "spec": spec, "model": ckpt.model, "state_dict": ckpt.state_dict},
               files["nan_spec_pt"])
    files["text_onnx"] = root / "text.onnx"
    files["text_onnx"].write_text("not a model")
    files["random_xml"] = root / "random.xml"
    files["random_xml"].write_bytes(rng.integers(0, 256, 512, dtype=np.uint8).tobytes())
    out, _ = exported
    stage = root / ".edgekit-export-leftover"
    stage.mkdir()
    for f in ("model.onnx", "model.onnx.edgekit.json"):
        (stage / f).write_bytes((out / f).read_bytes())
    files["stage_onnx"] = stage / "model.onnx"
    one_class = root / "one_class" / "only"
    one_class.mkdir(parents=True)
    corrupt = root / "corrupt_images"
    for folder in (one_class, corrupt / "a", corrupt / "b"):
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(3):
            (folder / f"{i}.jpg").write_bytes(b"\xff\xd8 broken" if folder != one_class else
                                              cv2.imencode(".jpg", np.zeros((8, 8, 3), np.uint8))[1].tobytes())
    files["one_class"], files["corrupt_images"] = root / "one_class", corrupt
    half = root / "class_unreadable"  # class a decodes, every image of class b is corrupt
    for name in ("a", "b"):
        (half / name).mkdir(parents=True)
        for i in range(6):
            (half / name / f"{i}.png").write_bytes(
                cv2.imencode(".png", rng.integers(0, 256, (16, 16, 3), dtype=np.uint8))[1].tobytes()
                if name == "a" else b"\x89PNG broken")
    files["class_unreadable"] = half
    files["binary_csv"] = root / "binary.csv"
    files["binary_csv"].write_bytes(b"\xff\xfe\x00\x81" * 64)
    files["csv_missing_column"] = root / "columns.csv"
    files["csv_missing_column"].write_text("file,class\na.jpg,x\n")
    idx = root / "idx"
    idx.mkdir()
    (idx / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00\x08\x03\x00\x00\x00\x10"))
    (idx / "train-labels-idx1-ubyte.gz").write_bytes(gzip.compress(b"\x00\x00"))
    files["idx_truncated"] = idx
    files["bad_json"] = root / "bad.json"
    files["bad_json"].write_text("{not json")
    files["wrong_shape_json"] = root / "shape.json"
    files["wrong_shape_json"].write_text('{"rows": 5, "environment": []}')
    files["empty_rows_json"] = root / "rows.json"
    files["empty_rows_json"].write_text('{"rows": [{"name": 1}], "environment": {}}')
    files["labels"] = root / "labels.txt"
    files["labels"].write_text("\n".join(ckpt.spec.labels) + "\n")
    plain = root / "plain.onnx"
    plain.write_bytes((out / "model.onnx").read_bytes())
    files.update(data=mini_data, ckpt=checkpoint, onnx=out / "model.onnx", plain_onnx=plain, clip=clip,
                 binary_data=binary_models["pytorch"].parent.parent / "data")
    return files


def fill(args: tuple[str, ...], files: dict, out) -> list[str]:
    values = {k: str(v) for k, v in files.items()}
    values["out"] = str(out)
    filled = []
    for arg in args:
        for key, value in values.items():
            arg = arg.replace("{%s}" % key, value)
        filled.append(arg)
    return filled


def listing(folder) -> set:
    return {p.relative_to(folder) for p in folder.rglob("*")} if folder.exists() else set()


@pytest.mark.parametrize("name, args, codes", CASES, ids=[c[0] for c in CASES])
def test_bad_input_ends_cleanly(name, args, codes, corpus, tmp_path):
    out = tmp_path / "out"
    before = listing(corpus["ro_dir"]) | listing(corpus["dir"])
    env = {**os.environ, "EDGEKIT_OFFLINE": "1"}
    try:
        proc = subprocess.run([sys.executable, "-m", "edgekit", *fill(args, corpus, out)], capture_output=True,
                              text=True, timeout=240, env=env, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}: no exit within 240 s (a hang)")
    output = proc.stdout + proc.stderr
    assert proc.returncode >= 0, f"{name}: killed by signal {-proc.returncode}\n{output[-2000:]}"
    assert "Traceback" not in output, f"{name}: traceback\n{output[-3000:]}"
    assert proc.returncode in codes, f"{name}: exit {proc.returncode}, expected {sorted(codes)}\n{output[-2000:]}"
    leftovers = [p for p in listing(out) if ".edgekit-export-" in str(p) or p.name.endswith(".tmp")]
    assert not leftovers, f"{name}: left {leftovers}"
    assert listing(corpus["ro_dir"]) | listing(corpus["dir"]) == before, f"{name}: wrote into a corpus folder"


# Interrupted runs: (name, edgekit args, signal, seconds after start). SIGINT must end with exit 130 (or 0 when
# the command finished first), one line, nothing half-written; after SIGKILL (which no process can handle)
# the next export into the same folder must clear what the killed one left.
INTERRUPTS = [
    (f"{command}-{signal_name}@{delay}", args, signal_name, delay)
    for command, args in (
        ("export-int8", ["export", "{ckpt}", "--format", "onnx", "--format", "openvino", "--int8", "--data", "{data}",
                         "--calib-size", "64", "--out", "{out}"]),
        ("train", ["train", "--data", "{data}", "--weights", "none", "--epochs", "3", "--limit", "256",
                   "--out", "{out}"]),
        ("quantize", ["quantize", "{ckpt}", "--data", "{data}", "--calib-batches", "4", "--out", "{out}/q.pt"]),
    )
    for signal_name, delay in (("SIGINT", 1.0), ("SIGINT", 4.0), ("SIGKILL", 2.0))
]


@pytest.mark.parametrize("name, args, signal_name, delay", INTERRUPTS, ids=[c[0] for c in INTERRUPTS])
def test_interrupted_commands_leave_nothing_that_looks_finished(name, args, signal_name, delay, corpus, tmp_path):
    import signal
    import time

    from conftest import default_sigint

    out = tmp_path / "out"
    out.mkdir()
    proc = subprocess.Popen([sys.executable, "-m", "edgekit", *fill(tuple(args), corpus, out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, stdin=subprocess.DEVNULL,
                            preexec_fn=default_sigint, env={**os.environ, "EDGEKIT_OFFLINE": "1"})
    time.sleep(delay)
    proc.send_signal(getattr(signal, signal_name))
    try:
        stdout, stderr = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        proc.kill()
        pytest.fail(f"{name}: still running 120 s after {signal_name}")
    staged = [p for p in listing(out) if ".edgekit-export-" in str(p)]
    if signal_name == "SIGKILL":
        assert proc.returncode in (-9, 0), (name, proc.returncode, stderr[-2000:])
        follow = subprocess.run([sys.executable, "-m", "edgekit", "export", str(corpus["ckpt"]), "--format", "onnx",
                                 "--no-verify", "--out", str(out)], capture_output=True, text=True, timeout=240)
        assert follow.returncode == 0, follow.stderr
        assert not [p for p in listing(out) if ".edgekit-export-" in str(p)], f"{name}: stale stage kept"
        return
    assert "Traceback" not in stdout + stderr, f"{name}: traceback\n{stderr[-3000:]}"
    assert proc.returncode in (130, 0), (name, proc.returncode, stderr[-2000:])
    assert not staged, f"{name}: left {staged}"
    assert not [p for p in listing(out) if p.name.endswith(".tmp")], f"{name}: left temporary files"
    if proc.returncode == 130:
        assert stderr.strip().splitlines()[-1] == "interrupted", stderr[-500:]
        # nothing that a later command would take for a finished result
        finished = [p for p in listing(out) if p.suffix in (".pt", ".onnx", ".xml", ".bin")]
        assert not finished, f"{name}: {finished}"


@pytest.fixture(scope="module")
def full_disk(tmp_path_factory):
    """A 256 KB tmpfs filled to the last byte (conftest.full_disk_folder); skipped with the reason where it
    cannot be mounted."""
    from conftest import full_disk_folder

    with full_disk_folder(tmp_path_factory.mktemp("full"), "256k") as (folder, reason):
        if folder is None:
            pytest.skip(f"full-disk cases not run: {reason}")
        yield folder


FULL_DISK = [
    ("run", ["run", "--model", "{onnx}", "--source", "{clip}", "--out", "{full}"]),
    ("run-no-video", ["run", "--model", "{onnx}", "--source", "{clip}", "--no-save-video", "--out", "{full}"]),
    ("train", ["train", "--data", "{data}", "--weights", "none", "--epochs", "1", "--limit", "64", "--out", "{full}"]),
    ("export", ["export", "{ckpt}", "--format", "onnx", "--out", "{full}"]),
    ("export-openvino", ["export", "{ckpt}", "--format", "openvino", "--out", "{full}"]),
    ("quantize", ["quantize", "{ckpt}", "--data", "{data}", "--calib-batches", "2", "--out", "{full}/q.pt"]),
    ("bench-json", ["bench", "{onnx}", "--min-runs", "1", "--min-seconds", "0", "--json", "{full}/b.json"]),
    ("verify-json", ["verify", "{onnx}", "--reference", "{ckpt}", "--data", "{data}", "--images", "8",
                     "--json", "{full}/v.json"]),
    ("doctor-json", ["doctor", "--json", "{full}/d.json"]),
    ("import", ["import", "{onnx}", "--labels", "{labels}", "--out", "{full}"]),
    ("join", ["join", "--server", "127.0.0.1:9", "--name", "x", "--model", "{onnx}", "--source", "{clip}",
              "--duration", "2", "--out", "{full}"]),
]


@pytest.mark.parametrize("name, args", FULL_DISK, ids=[c[0] for c in FULL_DISK])
def test_a_full_disk_ends_in_one_clean_line(name, args, corpus, full_disk):
    import shutil

    files = {**corpus, "full": full_disk}
    try:
        proc = subprocess.run([sys.executable, "-m", "edgekit", *fill(tuple(args), files, full_disk)],
                              capture_output=True, text=True, timeout=240, stdin=subprocess.DEVNULL,
                              env={**os.environ, "EDGEKIT_OFFLINE": "1"})
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name}: no exit within 240 s on a full disk (a hang)")
    output = proc.stdout + proc.stderr
    assert proc.returncode in (1, 2), f"{name}: exit {proc.returncode}\n{output[-2000:]}"
    assert "Traceback" not in output, f"{name}: traceback\n{output[-3000:]}"
    assert proc.stderr.strip().splitlines()[-1].startswith("error:"), output[-1500:]
    leftovers = sorted(full_disk.rglob("*"))  # the folder starts empty; a failed command leaves it so
    for path in leftovers:  # the next case starts from an empty folder again
        (shutil.rmtree if path.is_dir() else Path.unlink)(path)
    assert not leftovers, f"{name}: left {leftovers}"
