"""What the camera pipeline costs on top of the model, and what each switchable saving buys.

Plays a real 640x480 video (Megamind.avi from Debian's opencv-doc, scaled to 640x480 and played twice)
through `edgekit run` in a fresh process per configuration and compares its frames per second with the
model alone (the runtime's infer() in a loop on one preprocessed frame, same thread count, measured
before and after the pipeline runs and averaged). CPU seconds per frame come from the child's rusage.

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
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

MEGAMIND = Path("/usr/share/doc/opencv-doc/examples/data/Megamind.avi")

CONFIGS = {  # name -> extra `edgekit run` options
    "headless": ["--no-save-video"],
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


def model_only_fps(model: str, clip: Path, threads: int, seconds: float = 5.0) -> float:
    """Inferences per second of the runtime alone on one preprocessed frame of the clip."""
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
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        t0 = time.perf_counter()
        runtime.infer(x)
        times.append(time.perf_counter() - t0)
    runtime.close()
    return 1.0 / float(np.mean(times))


def pipeline_run(model: str, clip: Path, threads: int, extra: list[str], out: Path) -> dict:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    proc = subprocess.run([sys.executable, "-m", "edgekit", "run", "--model", model, "--source", str(clip),
                           "--threads", str(threads), "--out", str(out), *extra], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if proc.returncode != 0:
        sys.exit(f"error: edgekit run failed:\n{proc.stderr}")
    summary = json.loads((out / "summary.json").read_text())
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"pipeline_fps": summary["pipeline_fps"], "frames": summary["frames"],
            "inferences": summary["inferences"], "cpu_ms_per_frame": 1e3 * cpu / summary["frames"],
            "stages_p50_ms": {k: round(v["p50_ms"], 3) for k, v in summary["stages"].items()},
            "peak_rss_mb": summary["peak_rss_mb"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model")
    parser.add_argument("--threads", default="1,2")
    parser.add_argument("--out", default="benchmarks/results/pipeline_overhead")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        clip, frames = make_clip(Path(tmp))
        for threads in (int(t) for t in args.threads.split(",")):
            model_fps = [model_only_fps(args.model, clip, threads)]
            runs = {name: pipeline_run(args.model, clip, threads, extra, Path(tmp) / "run")
                    for name, extra in CONFIGS.items()}
            model_fps.append(model_only_fps(args.model, clip, threads))
            reference = sum(model_fps) / 2
            for name, run in runs.items():
                rows.append({"threads": threads, "config": name, "model_only_fps": reference,
                             "model_only_fps_runs": model_fps, "ratio": run["pipeline_fps"] / reference, **run})
    lines = [f"edgekit run on {frames} frames of Megamind.avi at 640x480, model {args.model}, "
             f"{platform.processor() or platform.machine()}",
             f"{'threads':>7}  {'config':<22} {'model-only FPS':>14} {'pipeline FPS':>12} {'ratio':>6} "
             f"{'inferences':>10} {'CPU ms/frame':>12} {'RSS MB':>7}"]
    for r in rows:
        lines.append(f"{r['threads']:>7}  {r['config']:<22} {r['model_only_fps']:>14.1f} {r['pipeline_fps']:>12.1f} "
                     f"{r['ratio']:>6.2f} {r['inferences']:>10} {r['cpu_ms_per_frame']:>12.2f} "
                     f"{r['peak_rss_mb']:>7.0f}")
    table = "\n".join(lines)
    print(table)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".txt").write_text(f"$ python benchmarks/scripts/pipeline_overhead.py {args.model} --threads {args.threads}\n"
                                       + table + "\n")
    out.with_suffix(".json").write_text(json.dumps({"command": sys.argv, "frames": frames, "rows": rows,
                                                    "machine": platform.uname()._asdict()}, indent=2) + "\n")


if __name__ == "__main__":
    main()
