"""Do `edgekit bench`'s numbers agree with the runtimes' own tools? (acceptance: within 15 %)

- OpenVINO: Intel's `benchmark_app` (ships with the openvino wheel), sync API, one stream (what the latency
  hint picks; benchmark_app only takes -nthreads with -hint none), same threads,
  f32 inference precision; its "Median" latency against our p50.
- ONNX Runtime: `onnxruntime_perf_test` is not part of the pip wheel, so this script times the model the
  way perf_test does (one session, same threads, sequential execution, full graph optimisation, N runs
  back to back after a warm-up) with nothing of edgekit in the loop; its median against our p50.

The three measurements of a model run one after another, in alternating order (ours first for one model,
theirs first for the next) so that a slow drift of the machine does not favour one side.
Usage: python benchmarks/scripts/crosscheck.py MODEL.onnx|MODEL.xml ... [--threads 2] [--runs 1000]
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path



def ours(model: str, threads: int, runs: int) -> float:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "r.json"
        subprocess.run([sys.executable, "-m", "edgekit", "bench", model, "--threads", str(threads), "--min-runs",
                        str(runs), "--min-seconds", "0", "--json", str(out)], check=True, capture_output=True)
        return json.loads(out.read_text())["rows"][0]["p50_ms"]


def ort_perf_test_style(model: str, threads: int, runs: int) -> float:
    code = f"""
import time, numpy as np, onnxruntime as ort
o = ort.SessionOptions(); o.intra_op_num_threads = {threads}; o.inter_op_num_threads = 1
o.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
s = ort.InferenceSession({model!r}, o, providers=["CPUExecutionProvider"])
i = s.get_inputs()[0]
x = np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in i.shape]).astype(np.float32)
feed = {{i.name: x}}
for _ in range(10): s.run(None, feed)
t = []
for _ in range({runs}):
    t0 = time.perf_counter(); s.run(None, feed); t.append(time.perf_counter() - t0)
print(float(np.median(t)) * 1e3)
"""
    proc = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return float(proc.stdout.split()[-1])


def benchmark_app(model: str, threads: int, runs: int) -> float:
    tool = Path(sys.executable).with_name("benchmark_app")
    proc = subprocess.run([str(tool), "-m", model, "-d", "CPU", "-api", "sync", "-hint", "none", "-nstreams", "1", "-nthreads",
                           str(threads), "-niter", str(runs), "-infer_precision", "f32", "-b", "1"],
                          check=True, capture_output=True, text=True)
    match = re.search(r"Median:\s+([\d.]+) (ms|us)", proc.stdout)
    if not match:
        raise SystemExit(f"benchmark_app printed no median:\n{proc.stdout[-2000:]}")
    return float(match.group(1)) / (1000 if match.group(2) == "us" else 1)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    rows = []
    for i, model in enumerate(args.models):
        tool_name, tool = (("benchmark_app", benchmark_app) if model.endswith(".xml")
                           else ("perf_test-style loop", ort_perf_test_style))
        order = [("edgekit bench", ours), (tool_name, tool)]
        measured = {name: fn(model, args.threads, args.runs) for name, fn in (order if i % 2 == 0 else order[::-1])}
        theirs = measured[tool_name]
        rows.append({"model": model, "tool": tool_name, "edgekit_p50_ms": measured["edgekit bench"],
                     "tool_median_ms": theirs, "ratio": measured["edgekit bench"] / theirs})
    print(f"{args.threads} threads, batch 1, {args.runs} runs each; ratio = edgekit p50 / tool median")
    print(f"{'model':<52}{'tool':<22}{'edgekit p50':>12}{'tool p50':>10}{'ratio':>8}")
    for r in rows:
        print(f"{r['model'][-51:]:<52}{r['tool']:<22}{r['edgekit_p50_ms']:>12.3f}{r['tool_median_ms']:>10.3f}"
              f"{r['ratio']:>8.3f}  {'within 15 %' if abs(r['ratio'] - 1) <= 0.15 else 'OFF BY MORE THAN 15 %'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"threads": args.threads, "runs": args.runs, "rows": rows,
                                               "time": time.strftime("%Y-%m-%d %H:%M:%S")}, indent=2) + "\n")


if __name__ == "__main__":
    main()
