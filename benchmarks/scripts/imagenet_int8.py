"""INT8 on a real ImageNet network and real photos: every INT8 route of edgekit against FP32.

torchvision's ImageNet MobileNetV2 (`edgekit import torchvision:mobilenet_v2`, weights from the torchvision
cache: `bash benchmarks/imagenet_weights.sh` puts them there offline) is quantized with unlabelled
calibration images and compared with its FP32 self on held-out real images that calibration never saw:

- calibration: 250 JPEGs of the OpenCV manual (opencv-doc, html/, a seeded sample of those at least 96 px)
  + 25 frames each of vtest.avi and Megamind.avi = 300 images;
- evaluation: every image in opencv-doc's examples/data, examples/text, examples/hfs/data,
  examples/alphamat/input_images and scikit-image's data folder that OpenCV decodes (144 here).

Both lists are written next to the results. For each recipe, export (ONNX QDQ + OpenVINO) and quantize
(PyTorch FX) run with default settings plus the recipe's options; the table shows top-1 agreement with
FP32 and top-5 containment of the FP32 top-1, from `edgekit verify`'s own rows, and the share of the
evaluation images on which FP32 itself is confident (top-1 probability >= 0.5), since agreement on images
the FP32 model is unsure about is where INT8 flips most.

Usage: python benchmarks/scripts/imagenet_int8.py [--out runs/imagenet_int8] [--recipes default,ort,keep]
Writes benchmarks/results/imagenet_int8.{txt,json} unless --results says otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

OCV = Path("/usr/share/doc/opencv-doc")
RECIPES = {
    "default": {},  # NNCF on ONNX and OpenVINO, full bias correction
    "fast": {"onnx_bias_correction": "fast", "ov_bias_correction": "fast"},  # NNCF's own default
    "ort": {"onnx_int8": "ort"},  # onnxruntime quantize_static, the previous default
    "keep": {"keep_float": ("first", "last")},
}


def photo_sets(out: Path) -> tuple[Path, Path]:
    import cv2
    import skimage

    def listed(folder: Path) -> list[Path]:
        return sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))

    evaluation = [p for folder in (OCV / "examples/data", OCV / "examples/text", OCV / "examples/hfs/data",
                                   OCV / "examples/alphamat/input_images", Path(skimage.__file__).parent / "data")
                  for p in listed(folder) if cv2.imread(str(p)) is not None]
    manual = sorted((OCV / "opencv4/html").rglob("*.jpg"))
    manual = [p for p in manual if (lambda im: im is not None and min(im.shape[:2]) >= 96)(cv2.imread(str(p)))]
    random.Random(0).shuffle(manual)
    calib, evals = out / "calib", out / "eval"
    for folder in (calib, evals):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for i, path in enumerate(manual[:250]):
        shutil.copy(path, calib / f"manual_{i:03d}{path.suffix}")
    from edgekit.core.data import load_images

    for video in ("vtest.avi", "Megamind.avi"):
        for i, frame in enumerate(load_images(OCV / "examples/data" / video, limit=25).arrays[:25]):
            cv2.imwrite(str(calib / f"{Path(video).stem}_{i:02d}.png"), frame)
    for i, path in enumerate(evaluation):
        shutil.copy(path, evals / f"{i:03d}_{path.name}")
    (out / "calib.txt").write_text("\n".join(map(str, manual[:250])) + "\n+ 25 evenly spaced frames each of "
                                   "vtest.avi and Megamind.avi\n")
    (out / "eval.txt").write_text("\n".join(map(str, evaluation)) + "\n")
    return calib, evals


def confident_share(checkpoint: Path, evals: Path) -> float:
    from edgekit.core.data import load_images
    from edgekit.core.metrics import scores_from_logits
    from edgekit.models.checkpoint import load_checkpoint
    from edgekit.models.loading import load_model, run_model

    ckpt = load_checkpoint(checkpoint)
    table = load_images(evals, split="test")
    x = table.inputs(range(len(table)), ckpt.spec)
    probs = scores_from_logits(run_model(load_model(ckpt), [x]), False)
    return float((probs.max(axis=1) >= 0.5).mean())


def run_recipe(name: str, options: dict, checkpoint: Path, calib: Path, evals: Path, out: Path) -> list[dict]:
    from edgekit.export.core import ExportConfig, export
    from edgekit.training.quantize import QuantizeConfig, quantize_checkpoint

    rows = []
    start = time.perf_counter()
    result = export(ExportConfig(checkpoint=str(checkpoint), formats=("onnx", "openvino"), int8=True,
                                 calib=str(calib), data=str(evals), calib_size=300, verify_images=0,
                                 out=str(out / name), **options))
    for row in result.verify_rows[2:]:
        if row.precision == "int8":
            rows.append({"recipe": name, "artifact": row.name, "agreement": row.agreement, "top5": row.top5,
                         "status": row.status})
    keep = options.get("keep_float", ())
    if not keep:  # PyTorch FX keeps every layer quantized (no --keep-float on that route yet)
        q = quantize_checkpoint(QuantizeConfig(checkpoint=str(checkpoint), calib=str(calib), data=str(evals),
                                               calib_batches=10, batch_size=30, out=str(out / name / "model_int8.pt")))
        rows.append({"recipe": name, "artifact": "PyTorch FX INT8", "agreement": q["top1_agreement"], "top5": None,
                     "status": "FAIL: " + "; ".join(q["gate_problems"]) if q["gate_problems"] else "ok"})
    for row in rows:
        row["seconds"] = round(time.perf_counter() - start, 1)
    return rows


def machine() -> dict:
    import nncf
    import onnxruntime
    import openvino
    import torch

    from edgekit.benchmarks.harness import environment

    env = environment()
    return {"cpu": f"{env['cpu']}, {env['usable_cpus']} cpus, {' '.join(env['isa'])}", "python": platform.python_version(), "torch": torch.__version__,
            "onnxruntime": onnxruntime.__version__, "openvino": openvino.__version__, "nncf": nncf.__version__,
            "command": " ".join([Path(sys.executable).name, *sys.argv])}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/imagenet_int8")
    parser.add_argument("--recipes", default=",".join(RECIPES))
    parser.add_argument("--results", default="benchmarks/results/imagenet_int8")
    args = parser.parse_args()
    out = Path(args.out)
    calib, evals = photo_sets(out)
    proc = subprocess.run([sys.executable, "-m", "edgekit", "import", "torchvision:mobilenet_v2", "--out",
                           str(out / "model")], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"import failed (run `bash benchmarks/imagenet_weights.sh` first?):\n{proc.stderr}")
    checkpoint = out / "model" / "model.pt"
    facts = machine()
    rows = []
    for name in args.recipes.split(","):
        rows += run_recipe(name, RECIPES[name], checkpoint, calib, evals, out)
    confident = confident_share(checkpoint, evals)
    lines = [f"# {facts['command']}", f"# CPU: {facts['cpu']}",
             f"# torch {facts['torch']}, onnxruntime {facts['onnxruntime']}, openvino {facts['openvino']}, "
             f"nncf {facts['nncf']}, python {facts['python']}",
             f"# {len(list(calib.iterdir()))} calibration images, {len(list(evals.iterdir()))} evaluation images "
             f"(lists: {out}/calib.txt, {out}/eval.txt); FP32 top-1 probability >= 0.5 on {confident:.0%} of them",
             f"{'recipe':<10}{'artifact':<18}{'agree':>8}{'top5':>8}  status"]
    for row in rows:
        top5 = "-" if row["top5"] is None else f"{row['top5']:.3f}"
        lines.append(f"{row['recipe']:<10}{row['artifact']:<18}{row['agreement']:>8.3f}{top5:>8}  {row['status']}")
    text = "\n".join(lines)
    print(text)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".txt").write_text(text + "\n")
    results.with_suffix(".json").write_text(json.dumps({"machine": facts, "confident_share": confident,
                                                        "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
