"""Clip models on the temporal benchmark (issue 19): the 3D MobileNet student, the same student distilled from
an I3D-style teacher inflated from ImageNet MobileNetV2, the distilled student after quantization-aware
training (INT8), and a single-frame 2D MobileNetV2 that shows whether time is used.

Data (`edgekit dataset clips`, said openly: real Fashion-MNIST images from the embedded subset, synthetic
motion): 16-frame 32x32 videos, 8 motion classes, 400 videos per class, two videos per object image; clips
of 8 frames, every 2nd; splits by object (the subject column), the same split for every model. The 2D model trains on the middle frame of
each video with the same split. Every step is an `edgekit` command; a step whose output exists is not rerun
(delete --out to start over).

Usage: python benchmarks/scripts/video_clips.py [--out runs/video_clips] [--per-class 400] [--epochs 15]
Writes benchmarks/results/video_clips.{txt,json} unless --results says otherwise.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

VTEST = Path("/usr/share/doc/opencv-doc/examples/data/vtest.avi")  # Debian opencv-doc: a real street camera
SIZE, VIDEO_FRAMES, FRAMES, STRIDE = 32, 16, 8, 2  # 16-frame videos, clips of every 2nd frame


def edgekit(*args: str, log: Path) -> None:
    """Run one edgekit command, its output appended to ``log``; a failure stops the script with its tail."""
    command = [sys.executable, "-m", "edgekit", *args]
    print("$ edgekit " + " ".join(args), flush=True)
    start = time.time()
    with open(log, "a") as fh:
        fh.write("$ edgekit " + " ".join(args) + "\n")
        fh.flush()
        proc = subprocess.run(command, stdout=fh, stderr=subprocess.STDOUT)
    print(f"  {time.time() - start:.0f} s, exit {proc.returncode}", flush=True)
    if proc.returncode not in (0,):
        sys.exit(f"failed: edgekit {' '.join(args)} (see {log})")


def middle_frames(clips: Path, out: Path) -> Path:
    """The middle frame of every video as a PNG, and frames.csv (path, label, subject) in segments.csv's order,
    so that a split by subject with the same seed is the clips' split."""
    import cv2

    from edgekit.core.clips import load_segments_csv

    table = load_segments_csv(clips / "segments.csv")
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with open(clips / "segments.csv", newline="") as fh:
        segments = list(csv.DictReader(fh))
    for i, row in enumerate(segments):
        frames = table.segment(i)
        name = f"{row['label']}_{i:06d}.png"
        cv2.imwrite(str(out / name), frames[len(frames) // 2])
        rows.append({"path": name, "label": row["label"], "subject": row["subject"]})
    with open(out / "frames.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["path", "label", "subject"])
        writer.writeheader()
        writer.writerows(rows)
    return out / "frames.csv"


def cost(checkpoint: Path) -> tuple[float, float]:
    """(parameters in millions, multiply-accumulates per input in millions) of a checkpoint's FP32 model."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from edgekit.models.checkpoint import load_checkpoint
    from edgekit.models.loading import example_input, load_model

    ckpt = load_checkpoint(checkpoint)
    model = load_model(ckpt).eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model(example_input(ckpt.spec))
    return sum(p.numel() for p in model.parameters()) / 1e6, counter.get_total_flops() / 2e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/video_clips")
    parser.add_argument("--per-class", default="400")
    parser.add_argument("--epochs", default="15")
    # the inflated network starts by averaging frames (its kernels are the 2D ones spread over time), and its
    # ImageNet BatchNorm statistics do not fit grey 32x32 clips: frozen, it reached 0.49 validation accuracy in
    # 8 epochs at the default fine-tuning rate (1e-4) and diverged at 1e-3; --train-bn lets them adapt
    parser.add_argument("--teacher-epochs", default="10")
    parser.add_argument("--results", default="benchmarks/results/video_clips")
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = out / "log.txt"
    clips = out / "clips"
    segments = str(clips / "segments.csv")
    clip_args = ["--imgsz", str(SIZE), "--clip-frames", str(FRAMES), "--frame-stride", str(STRIDE), "--schedule",
                 "cosine"]
    steps = [
        (clips / "segments.csv", ["dataset", "clips", "--out", str(clips), "--per-class", args.per_class,
                                  "--frames", str(VIDEO_FRAMES), "--size", str(SIZE)]),
        (out / "student/model.pt", ["train", "--data", segments, "--model", "mobilenet3d", "--weights", "none",
                                    "--epochs", args.epochs, *clip_args, "--out", str(out / "student")]),
        (out / "teacher/model.pt", ["train", "--data", segments, "--model", "i3d_mobilenet_v2", "--weights",
                                    "imagenet", "--epochs", args.teacher_epochs, "--head-epochs", "1", "--finetune-lr", "3e-4",
                                    "--train-bn", *clip_args,
                                    "--out", str(out / "teacher")]),
        (out / "student_kd/model.pt", ["train", "--data", segments, "--model", "mobilenet3d", "--weights", "none",
                                       "--epochs", args.epochs, *clip_args, "--teacher", str(out / "teacher/model.pt"),
                                       "--kd-temperature", "3", "--kd-alpha", "0.9", "--out", str(out / "student_kd")]),
        (out / "student_kd/model_int8.pt", ["quantize", str(out / "student_kd/model.pt"), "--data", segments,
                                            "--mode", "qat", "--qat-epochs", "3",
                                            "--out", str(out / "student_kd/model_int8.pt")]),
        (out / "export/fp32/model.xml", ["export", str(out / "student_kd/model.pt"), "--format", "onnx", "--format",
                                         "openvino", "--data", segments, "--out", str(out / "export/fp32")]),
        (out / "export/int8/model_int8.xml", ["export", str(out / "student_kd/model_int8.pt"), "--format", "onnx",
                                              "--format", "openvino", "--data", segments,
                                              "--out", str(out / "export/int8")]),
    ]
    for done, command in steps:
        if not done.exists():
            edgekit(*command, log=log)
    frames_csv = out / "frames/frames.csv"
    if not frames_csv.exists():
        middle_frames(clips, out / "frames")
    if not (out / "frame2d/model.pt").exists():
        edgekit("train", "--data", str(frames_csv), "--group-column", "subject", "--model", "mobilenet_v2",
                "--weights", "none", "--imgsz", str(SIZE), "--epochs", args.epochs, "--schedule", "cosine",
                "--out", str(out / "frame2d"), log=log)
    bench_json = out / "bench.json"
    artifacts = [out / "export/fp32/model.onnx", out / "export/int8/model_int8.onnx", out / "export/fp32/model.xml",
                 out / "export/int8/model_int8.xml"]
    edgekit("bench", "run", *map(str, artifacts), "--threads", "2", "--data", segments, "--min-seconds", "5",
            "--json", str(bench_json), log=log)
    runs = {}
    for artifact in ("export/int8/model_int8.onnx", "export/int8/model_int8.xml"):
        folder = out / ("run_vtest_" + Path(artifact).suffix[1:])
        edgekit("run", "--model", str(out / artifact), "--app", "clip", "--source", str(VTEST), "--no-save-video",
                "--threads", "2", "--out", str(folder), log=log)
        runs[artifact] = json.loads((folder / "summary.json").read_text())
    report(args, out, bench_json, runs)


def report(args, out: Path, bench_json: Path, runs: dict) -> None:
    import torch

    accuracy = {name: json.loads((out / name / "metrics.json").read_text())["accuracy"]
                for name in ("student", "teacher", "student_kd", "frame2d")}
    bench = json.loads(bench_json.read_text())
    rows = {(r["name"], r["runtime"]): r for r in bench["rows"]}
    costs = {name: cost(out / name / "model.pt") for name in ("student", "teacher", "frame2d")}
    cpu = bench["environment"]["cpu"]
    lines = [f"# python {' '.join(sys.argv)}",
             f"# CPU: {cpu}, {os.cpu_count()} cpus; torch {torch.__version__}; python {platform.python_version()}; "
             f"onnxruntime/openvino: {', '.join(sorted({r['describe']['version'] for r in bench['rows']}))}",
             f"# data: edgekit dataset clips --per-class {args.per_class} --frames {VIDEO_FRAMES} --size {SIZE}: real "
             "Fashion-MNIST images (embedded subset) moving along 8 synthetic motions; the label is the motion",
             f"# split by object image (subject column), the same for every model; {bench['rows'][0].get('eval_images')} test clips",
             f"{'model':42s} {'params M':>8} {'MMAC':>8} {'test acc':>8}"]
    names = {"frame2d": f"2D MobileNetV2, middle frame only ({SIZE}x{SIZE})",
             "teacher": "teacher: i3d_mobilenet_v2 (ImageNet, inflated)",
             "student": "student: mobilenet3d FP32",
             "student_kd": "student: mobilenet3d FP32, distilled"}
    for key in ("frame2d", "teacher", "student", "student_kd"):
        params, macs = costs.get(key, costs["student"])
        lines.append(f"{names[key]:42s} {params:8.2f} {macs:8.1f} {accuracy[key]:8.4f}")
    lines.append("")
    lines.append(f"{'artifact':28s} {'runtime':12s} {'size MB':>8} {'p50 ms':>8} {'ms/frame':>8} {'test acc':>8}")
    for (name, runtime), r in rows.items():
        lines.append(f"{name:28s} {runtime:12s} {r['size_mb']:8.2f} {r['p50_ms']:8.2f} {r['p50_ms_per_frame']:8.3f} "
                     f"{r.get('accuracy', float('nan')):8.4f}")
    ratios = {}
    for fp, q, runtime in (("model.onnx", "model_int8.onnx", "onnxruntime"), ("model.xml", "model_int8.xml", "openvino")):
        a, b = rows[(fp, runtime)], rows[(q, runtime)]
        ratios[runtime] = {"smaller": a["size_mb"] / b["size_mb"], "faster_p50": a["p50_ms"] / b["p50_ms"],
                           "accuracy_delta_pp": 100 * (b["accuracy"] - a["accuracy"])}
        lines.append(f"INT8 vs FP32 distilled student on {runtime}: {ratios[runtime]['smaller']:.2f}x smaller, "
                     f"{ratios[runtime]['faster_p50']:.2f}x faster (p50, batch 1, 2 threads), accuracy "
                     f"{ratios[runtime]['accuracy_delta_pp']:+.2f} pp")
    lines.append(f"3D student vs 2D single frame: {100 * (accuracy['student'] - accuracy['frame2d']):+.1f} pp; "
                 f"distillation: {100 * (accuracy['student_kd'] - accuracy['student']):+.2f} pp")
    decisions = {}
    for artifact, summary in runs.items():
        rate = summary["inferences"] / summary["seconds"]
        decisions[artifact] = {"decisions_per_s": rate, "frames": summary["frames"], "seconds": summary["seconds"],
                               "stages": summary["stages"], "runtime": summary["runtime"]["runtime"]}
        stages = ", ".join(f"{k} {v['p50_ms']:.2f}" for k, v in summary["stages"].items())
        lines.append(f"edgekit run --app clip on vtest.avi ({summary['frames']} frames of 768x576), {artifact}: "
                     f"{summary['inferences']} clip decisions in {summary['seconds']:.1f} s = {rate:.1f} per second; "
                     f"stage p50 ms: {stages}")
    text = "\n".join(lines)
    print(text)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".txt").write_text(text + "\n")
    results.with_suffix(".json").write_text(json.dumps({"accuracy": accuracy, "costs": costs, "ratios": ratios, "run_vtest": decisions,
                                                        "bench": bench, "command": " ".join(sys.argv)}, indent=1))


if __name__ == "__main__":
    main()
