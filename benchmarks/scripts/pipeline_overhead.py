"""What the camera pipeline costs on top of the model, and what each switchable saving buys.

Plays a real 640x480 video (Megamind.avi from Debian's opencv-doc, scaled to 640x480 and played twice)
through `edgekit run` in a fresh process per configuration and compares its frames per second with the
model alone (the runtime's infer() in a loop on one preprocessed frame, same thread count, measured
before and after the pipeline runs and averaged). CPU time per frame is the run's own (summary.json: all threads,
while frames ran); the non-model part subtracts the model's CPU time per inference, measured alone.

Usage (repository root, venv with edgekit[onnx] active):
    python benchmarks/scripts/pipeline_overhead.py runs/latency/mobilenet_v2_224/model_int8.onnx --threads 1,2
    (the model: `python benchmarks/scripts/random_init.py mobilenet_v2 224 DATA M.pt` then
     `edgekit export M.pt --format onnx --int8 --data DATA`; latency does not depend on the weights)
Writes benchmarks/results/pipeline_overhead.{json,txt} unless --out says otherwise.
"""
from __future__ import annotations

import argparse
import json
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")

CONFIGS = {  # name -> extra `edgekit run` options
    "headless": ["--no-save-video"],
    "headless --full-decode": ["--no-save-video", "--full-decode"],
    "video": [],
    "video --every 3": ["--every", "3"],
    "video --motion-gate 2": ["--motion-gate", "2"],
    "video --scale 0.5": ["--scale", "0.5"],
}


def make_clip(folder: Path, loops: int = 2) -> tuple[Path, int]:
    import cv2

    if not MEGAMIND.is_file():
        sys.exit(f"error: {MEGAMIND} is missing; run `bash tools/system-packages.sh` (Debian opencv-doc)")
    path = folder / "megamind_640x480.avi"
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 24, (640, 480))
    frames = 0
    for _ in range(loops):
        video = cv2.VideoCapture(str(MEGAMIND))
        while True:
            ok, image = video.read()
            if not ok:
                break
            writer.write(cv2.resize(image, (640, 480), interpolation=cv2.INTER_AREA))
            frames += 1
    writer.release()
    return path, frames


def model_only(model: str, clip: Path, threads: int, seconds: float = 5.0) -> tuple[float, float]:
    """Inferences per second of the runtime alone on one preprocessed frame of the clip, and the CPU
    milliseconds (all threads of this process) one inference takes."""
    import cv2
    import numpy as np

    from edgekit.runtimes import RuntimeOptions, load_runtime
    from edgekit.core.spec import preprocess

    ok, frame = cv2.VideoCapture(str(clip)).read()
    runtime = load_runtime(model, None, RuntimeOptions(threads=threads))
    x = preprocess(frame, runtime.spec, source_color="BGR")[None]
    for _ in range(50):
        runtime.infer(x)
    times = []
    cpu = time.process_time()
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        runtime.infer(x)
        times.append(time.perf_counter() - t0)
    cpu = time.process_time() - cpu
    runtime.close()
    return 1.0 / float(np.mean(times)), 1e3 * cpu / len(times)


NULL_CONFIGS = ("headless", "headless --full-decode", "video", "video --scale 0.5")


def null_model(model: str, folder: Path) -> Path:
    """A model that costs next to nothing (global average pool, then a channels x classes MatMul) with ``model``'s input name
    and spec: `edgekit run` on it spends its CPU time on everything but a network."""
    import shutil

    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    real = onnx.load(model, load_external_data=False)
    name = real.graph.input[0].name
    channels = real.graph.input[0].type.tensor_type.shape.dim[1].dim_value or 3
    outputs = real.graph.output[0].type.tensor_type.shape.dim[-1].dim_value
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", [name], ["pooled"]),
         helper.make_node("Flatten", ["pooled"], ["flat"]),
         helper.make_node("MatMul", ["flat", "w"], ["logits"])],
        "null", [helper.make_tensor_value_info(name, TensorProto.FLOAT, ["n", channels, "h", "w"])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["n", outputs])],
        [numpy_helper.from_array(np.linspace(-1, 1, channels * outputs, dtype=np.float32).reshape(channels, outputs),
                                 "w")])
    path = folder / "null.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), path)
    shutil.copy(model + ".edgekit.json", str(path) + ".edgekit.json")
    return path


def pipeline_run(model: str, clip: Path, threads: int, extra: list[str], out: Path) -> dict:
    proc = subprocess.run([sys.executable, "-m", "edgekit", "run", "--model", model, "--source", str(clip),
                           "--threads", str(threads), "--out", str(out), *extra], capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"error: edgekit run failed:\n{proc.stderr}")
    summary = json.loads((out / "summary.json").read_text())
    # the process's CPU time while frames ran (every thread; start-up and model loading excluded)
    return {"pipeline_fps": summary["pipeline_fps"], "frames": summary["frames"],
            "inferences": summary["inferences"], "cpu_ms_per_frame": summary["cpu_ms_per_frame"],
            "decoded_at": summary["source"]["decoded_at"],
            "stages_p50_ms": {k: round(v["p50_ms"], 3) for k, v in summary["stages"].items()},
            "peak_rss_mb": summary["peak_rss_mb"]}


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").is_file() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return "CPU model unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--out", default="benchmarks/results/pipeline_overhead")
    parser.add_argument("--repeats", type=int, default=5, help="runs per null-model configuration (median)")
    args = parser.parse_args()
    rows, null_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        clip, frames = make_clip(Path(tmp))
        null = null_model(args.model, Path(tmp))
        for name in NULL_CONFIGS:  # 1 thread: the pipeline's own cost, measured directly
            runs = [pipeline_run(str(null), clip, 1, CONFIGS[name], Path(tmp) / "run") for _ in range(args.repeats)]
            cpu = sorted(run["cpu_ms_per_frame"] for run in runs)
            null_rows.append({"config": name, "cpu_ms_per_frame_runs": cpu, "cpu_ms_per_frame": cpu[len(cpu) // 2],
                              "pipeline_fps": sorted(run["pipeline_fps"] for run in runs)[len(runs) // 2],
                              "decoded_at": runs[0]["decoded_at"], "stages_p50_ms": runs[0]["stages_p50_ms"]})
        for threads in (int(t) for t in args.threads.split(",")):
            model = [model_only(args.model, clip, threads)]
            runs = {name: pipeline_run(args.model, clip, threads, extra, Path(tmp) / "run")
                    for name, extra in CONFIGS.items()}
            model.append(model_only(args.model, clip, threads))
            reference = sum(fps for fps, _ in model) / 2
            model_cpu = sum(cpu for _, cpu in model) / 2
            for name, run in runs.items():
                # what the pipeline costs besides the model: its CPU per frame less the model's share
                non_model = run["cpu_ms_per_frame"] - model_cpu * run["inferences"] / run["frames"]
                rows.append({"threads": threads, "config": name, "model_only_fps": reference,
                             "model_only_runs": model, "model_cpu_ms": model_cpu,
                             "ratio": run["pipeline_fps"] / reference, "non_model_cpu_ms_per_frame": non_model, **run})
    lines = [f"edgekit run on {frames} frames of Megamind.avi at 640x480 (MJPEG), model {args.model}, "
             f"{platform.processor() or platform.machine()}, {cpu_name()}",
             f"The pipeline's own cost: a null model (average pool + 3x10 MatMul, same input spec), 1 thread, "
             f"median of {args.repeats} runs (min..max)",
             f"{'config':<23} {'CPU ms/frame':>12} {'min..max':>13} {'pipeline FPS':>12} {'decoded':>9}"]
    for r in null_rows:
        runs = r["cpu_ms_per_frame_runs"]
        lines.append(f"{r['config']:<23} {r['cpu_ms_per_frame']:>12.2f} {runs[0]:>6.2f}..{runs[-1]:<5.2f} "
                     f"{r['pipeline_fps']:>12.1f} {r['decoded_at']:>9}")
    lines += ["",
              f"With the model ({args.model}), one run per configuration",
              "CPU ms/frame: the run's process CPU time (all threads) per frame; non-model: less the model's CPU "
             "time per inference (measured alone) times inferences per frame",
             f"{'threads':>7}  {'config':<23} {'model-only FPS':>14} {'pipeline FPS':>12} {'ratio':>6} "
             f"{'inferences':>10} {'CPU ms/frame':>12} {'non-model':>9} {'decoded':>9} {'RSS MB':>7}"]
    for r in rows:
        lines.append(f"{r['threads']:>7}  {r['config']:<23} {r['model_only_fps']:>14.1f} {r['pipeline_fps']:>12.1f} "
                     f"{r['ratio']:>6.2f} {r['inferences']:>10} {r['cpu_ms_per_frame']:>12.2f} "
                     f"{r['non_model_cpu_ms_per_frame']:>9.2f} {r['decoded_at']:>9} {r['peak_rss_mb']:>7.0f}")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text(f"$ python benchmarks/scripts/pipeline_overhead.py {args.model} --threads {args.threads}\n"
                                       + table + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": sys.argv, "frames": frames, "null_model": null_rows, "rows": rows,
                                                    "machine": platform.uname()._asdict()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
