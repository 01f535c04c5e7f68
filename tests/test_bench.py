"""`edgekit bench` end to end on the tiny model: every runtime and precision in one table, the output files,
`bench compare`, and bad input. Latency values are never asserted (the machine is shared); structure is."""
import csv
import json

import numpy as np
import pytest

from conftest import run_cli

# Tier: one process per bench row, on exported models.
pytestmark = pytest.mark.slow

FAST = ("--min-runs", "5", "--min-seconds", "0", "--warmup", "1")


@pytest.fixture(scope="module")
def bench_run(exported, trained, quantized, mini_data, tmp_path_factory):
    out, _ = exported
    folder = tmp_path_factory.mktemp("bench")
    models = [str(trained["checkpoint"]), quantized["int8"]["path"], str(out / "model.onnx"),
              str(out / "model_int8.onnx"), str(out / "model.xml"), str(out / "model_int8.xml")]
    proc = run_cli("bench", *models, "--threads", "1", "--data", str(mini_data), "--images", "200", *FAST,
                   "--json", str(folder / "a.json"), "--csv", str(folder / "a.csv"),
                   "--markdown", str(folder / "a.md"), "--plot", str(folder / "a.png"))
    return proc, folder


def test_one_table_over_every_runtime_and_precision(bench_run):
    proc, folder = bench_run
    assert proc.returncode == 0, proc.stderr
    result = json.loads((folder / "a.json").read_text())
    rows = result["rows"]
    assert [(r["runtime"], r["precision"]) for r in rows] == [
        ("pytorch", "fp32"), ("pytorch", "int8"), ("onnxruntime", "fp32"), ("onnxruntime", "int8"),
        ("openvino", "fp32"), ("openvino", "int8")]
    for r in rows:
        assert r["status"] == "ok", r
        assert r["p50_ms"] <= r["p90_ms"] <= r["p99_ms"] and r["runs"] >= 5 and r["eval_images"] == 200
        assert 0 <= r["accuracy"] <= 1 and r["peak_rss_mb"] > 0 and r["size_mb"] > 0
        assert r["describe"]["threads"] == 1
    reference = rows[0]
    assert reference["reference"] and reference["agreement"] == 1.0 and reference["delta_pp"] == 0
    fp32_exports = [r for r in rows[2:] if r["precision"] == "fp32"]
    assert all(r["agreement"] == 1.0 for r in fp32_exports)  # same network, same decisions
    assert all(not r["torch_imported"] for r in rows if r["runtime"] == "onnxruntime")
    env = result["environment"]
    assert env["cpu"] and env["packages"]["onnxruntime"] and "bench" in env["command"]
    for header in ("p90 ms", "x ref p90", "ok (reference)"):
        assert header in proc.stdout


def test_csv_markdown_and_plot_are_written(bench_run):
    _, folder = bench_run
    with open(folder / "a.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 6 and float(rows[3]["p90_ms"]) > 0
    markdown = (folder / "a.md").read_text()
    assert markdown.count("\n| ") >= 6 and "Command: `" in markdown
    assert (folder / "a.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_compare_shows_ratios(bench_run, tmp_path):
    _, folder = bench_run
    data = json.loads((folder / "a.json").read_text())
    for r in data["rows"]:
        r["p50_ms"] *= 2
        r["p90_ms"] *= 2
    (tmp_path / "b.json").write_text(json.dumps(data))
    proc = run_cli("bench", "compare", str(folder / "a.json"), str(tmp_path / "b.json"))
    assert proc.returncode == 0, proc.stderr
    ratios = [line.split()[-1] for line in proc.stdout.splitlines()[3:]]
    assert len(ratios) == 6 and all(abs(float(x) - 2.0) < 1e-6 for x in ratios)
    proc = run_cli("bench", "compare", str(folder / "a.json"), str(folder / "a.csv"))
    assert proc.returncode == 2 and "not a benchmark JSON file" in proc.stderr and "Traceback" not in proc.stderr


def test_a_bad_row_fails_with_its_reason_while_others_run(exported, tmp_path):
    out, _ = exported
    corrupt = tmp_path / "corrupt.onnx"
    corrupt.write_bytes((out / "model.onnx").read_bytes()[:5000])
    proc = run_cli("bench", str(out / "model.onnx"), str(corrupt), str(tmp_path / "notes.txt"), *FAST,
                   "--json", str(tmp_path / "r.json"))
    assert proc.returncode == 1
    rows = json.loads((tmp_path / "r.json").read_text())["rows"]
    assert [r["status"] for r in rows] == ["ok", "failed", "failed"]
    assert "onnxruntime cannot load" in rows[1]["reason"] and "model not found" in rows[2]["reason"]
    assert "Traceback" not in proc.stderr


def test_wrong_input_shape_in_data_is_a_failed_row(exported, tmp_path):
    out, _ = exported
    np.savez(tmp_path / "wrong.npz", x=np.zeros((4, 1, 28, 28), np.float32), y=np.zeros(4, int))
    proc = run_cli("bench", str(out / "model.onnx"), "--data", str(tmp_path / "wrong.npz"), *FAST)
    assert proc.returncode == 1
    assert "does not fit the model: expected (N, 3, 32, 32)" in proc.stdout


@pytest.mark.parametrize("args, fragment", [
    (("README.md",), "not a model file"),
    (("missing.onnx",), "model not found"),
    (("--threads", "two", "x.onnx"), "comma-separated integers"),
])
def test_nothing_runnable_is_one_line_and_nonzero(args, fragment, tmp_path):
    from conftest import REPO

    proc = run_cli("bench", *args, cwd=REPO)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and fragment in last and "Traceback" not in proc.stderr


def test_runtime_not_installed_is_a_skipped_row(exported):
    import subprocess
    import sys

    out, _ = exported
    code = ("import sys; sys.modules['openvino'] = None\n"
            "from edgekit.benchmarks.harness import BenchConfig, plan\n"
            f"rows = plan(BenchConfig(models=({str(out / 'model.xml')!r},)))\n"
            "print(rows[0]['status'], '|', rows[0]['reason'])\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("skipped |") and 'pip install "edgekit[openvino]"' in proc.stdout


def test_peak_rss_is_the_rows_own_not_the_parents(exported):
    """Linux carries ru_maxrss across fork + exec; the worker must report its own peak, even when the
    process that starts it (here: pytest, holding torch and models) is much bigger."""
    from edgekit.benchmarks.harness import BenchConfig, bench

    out, _ = exported
    result = bench(BenchConfig(models=(str(out / "model.onnx"),), threads=(1,), min_runs=3, min_seconds=0, warmup=0))
    own_peak = next(int(line.split()[1]) / 1024 for line in open("/proc/self/status") if line.startswith("VmHWM:"))
    row = result["rows"][0]
    assert row["status"] == "ok" and 0 < row["peak_rss_mb"] < own_peak


def test_a_thread_list_gives_a_row_per_count_and_evaluates_once(exported, mini_data, tmp_path):
    out, _ = exported
    proc = run_cli("bench", str(out / "model.onnx"), "--threads", "1,2", "--data", str(mini_data), "--images", "50",
                   *FAST, "--json", str(tmp_path / "t.json"))
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [(r["threads"], r["describe"]["threads"]) for r in rows] == [(1, 1), (2, 2)]
    assert rows[0]["accuracy"] == rows[1]["accuracy"] and rows[1]["eval_images"] == 50


def test_bench_evaluates_on_the_models_own_test_split_and_refuses_other_data(image_folder, tmp_path):
    """A model trained with seed 1 and 15 %/15 % fractions: bench rebuilds exactly its test split (no training
    image among them; its accuracy equals the one training reported) and refuses data it was not trained on."""
    import shutil

    from edgekit.benchmarks.worker import evaluation_indices
    from edgekit.models.checkpoint import load_checkpoint
    from edgekit.training.trainer import TrainConfig, load_data, train

    cfg = TrainConfig(data=str(image_folder), weights="none", epochs=1, batch_size=16, seed=1, val_fraction=0.15,
                      test_fraction=0.15, out=str(tmp_path / "model"), threads=2)
    result = train(cfg)
    spec = load_checkpoint(result["checkpoint"]).spec
    assert spec.split["seed"] == 1 and spec.split["test_fraction"] == 0.15 and len(spec.split["fingerprint"]) == 16
    trained_on = load_data(cfg)
    _, evaluated = evaluation_indices(str(image_folder), spec, 0, 0)
    assert set(evaluated) == set(trained_on.indices("test"))
    assert not set(evaluated) & set(trained_on.indices("train")) and not set(evaluated) & set(trained_on.indices("val"))

    proc = run_cli("bench", str(result["checkpoint"]), "--data", str(image_folder), "--min-runs", "5",
                   "--min-seconds", "0", "--json", str(tmp_path / "b.json"))
    assert proc.returncode == 0, proc.stderr
    row = json.loads((tmp_path / "b.json").read_text())["rows"][0]
    assert row["accuracy"] == pytest.approx(result["report"]["accuracy"])  # the test split training reported on

    other = tmp_path / "other"
    shutil.copytree(image_folder, other)
    (other / "cat" / "000.png").unlink()  # same classes, different images: not the model's data
    proc = run_cli("bench", str(result["checkpoint"]), "--data", str(other), "--min-runs", "5", "--min-seconds", "0",
                   "--json", str(tmp_path / "c.json"))
    assert proc.returncode == 1
    row = json.loads((tmp_path / "c.json").read_text())["rows"][0]
    assert row["status"] == "failed" and "is not the data this model was trained on" in row["reason"]


def test_a_batch_on_a_batch_one_graph_is_labelled_as_chunked(exported):
    """The exported ONNX takes one image at a time: --batch 4 runs four calls, and the table says so."""
    out, _ = exported
    proc = run_cli("bench", str(out / "model.onnx"), "--batch", "4", "--min-runs", "3", "--min-seconds", "0",
                   "--warmup", "1")
    assert proc.returncode == 0, proc.stderr
    row = next(line for line in proc.stdout.splitlines() if line.startswith("model.onnx"))
    assert " 4=4x1 " in row and "a batch of 4 is 4 calls" in proc.stdout


def test_requests_add_a_throughput_column_for_every_runtime(exported, trained, tmp_path):
    """--requests 2: OpenVINO through an AsyncInferQueue of 2 requests (compiled for throughput), onnxruntime
    and PyTorch with 2 threads calling the model; every row gets images/s and the compiled streams are shown."""
    out, _ = exported
    proc = run_cli("bench", str(trained["checkpoint"]), str(out / "model.onnx"), str(out / "model.xml"),
                   "--threads", "1", "--requests", "2", "--hint", "THROUGHPUT", *FAST, "--json", str(tmp_path / "t.json"))
    assert proc.returncode == 0, proc.stderr
    assert "thru FPS" in proc.stdout and "AsyncInferQueue" in proc.stdout
    rows = json.loads((tmp_path / "t.json").read_text())["rows"]
    assert [r["runtime"] for r in rows] == ["pytorch", "onnxruntime", "openvino"]
    assert all(r["requests"] == 2 and r["throughput_fps"] > 0 for r in rows), rows
    assert rows[2]["describe"]["compiled"]["PERFORMANCE_HINT"] == "THROUGHPUT"
    assert rows[2]["describe"]["compiled"]["NUM_STREAMS"] is not None
    latency_only = run_cli("bench", str(out / "model.xml"), "--hint", "THROUGHPUT", *FAST)
    assert latency_only.returncode == 0 and "only pays off with several inferences" in latency_only.stderr
    assert "thru FPS" not in latency_only.stdout
    bad = run_cli("bench", str(out / "model.onnx"), "--requests", "-1")
    assert bad.returncode == 2 and "--requests" in bad.stderr and "Traceback" not in bad.stderr


def test_the_speedup_names_its_reference_and_can_use_the_fastest_one(exported, tmp_path):
    out, _ = exported
    for baseline in ("reference", "fastest"):
        proc = run_cli("bench", str(out / "model.onnx"), str(out / "model_int8.onnx"), "--threads", "1,2",
                       "--baseline", baseline, *FAST, "--json", str(tmp_path / f"{baseline}.json"))
        assert proc.returncode == 0, proc.stderr
        rows = json.loads((tmp_path / f"{baseline}.json").read_text())["rows"]
        fp32 = [r for r in rows if r["precision"] == "fp32"]
        if baseline == "reference":
            assert "x ref p90 = p90 of model.onnx on onnxruntime at the row's thread count" in proc.stdout
            assert [r["baseline_threads"] for r in rows] == [r["threads"] for r in rows]
        else:
            fastest = min(fp32, key=lambda r: r["p90_ms"])
            assert f"fastest model.onnx on onnxruntime row ({fastest['threads']} thread(s))" in proc.stdout
            assert {r["baseline_threads"] for r in rows} == {fastest["threads"]}
            assert all(abs(r["speedup_p90"] - fastest["p90_ms"] / r["p90_ms"]) < 1e-9 for r in rows)


def test_plot_labels_name_the_folder_only_when_file_names_collide():
    from edgekit.benchmarks.harness import point_label

    rows = [{"model": "runs/teacher/model.onnx", "name": "model.onnx", "runtime": "onnxruntime", "precision": "fp32",
             "threads": 1},
            {"model": "runs/pruned/model.onnx", "name": "model.onnx", "runtime": "onnxruntime", "precision": "fp32",
             "threads": 1},
            {"model": "runs/pruned/model_int8.onnx", "name": "model_int8.onnx", "runtime": "onnxruntime",
             "precision": "int8", "threads": 1}]
    assert [point_label(r, rows) for r in rows] == [
        "teacher/model.onnx: onnxruntime fp32 t1", "pruned/model.onnx: onnxruntime fp32 t1",
        "model_int8.onnx: onnxruntime int8 t1"]
