"""INT8 on a real ImageNet network and real photos: every INT8 route of edgekit against FP32.

torchvision's ImageNet MobileNetV2 (`edgekit import torchvision:mobilenet_v2`, weights from the torchvision
cache: `bash benchmarks/imagenet_weights.sh` puts them there offline) is quantized with unlabelled
calibration images and compared with its FP32 self on held-out real images that calibration never saw:

- calibration: 250 JPEGs of the OpenCV manual (opencv-doc, html/, a seeded sample of those at least 96 px)
  + 25 frames each of Megamind.avi and Megamind_bugy.avi = 300 images;
- evaluation: the photographs among the images in opencv-doc's examples/data, examples/text,
  examples/hfs/data and examples/alphamat/input_images, scikit-image's and scikit-learn's sample images and
  matplotlib's grace_hopper.jpg (drawings, logos, renders, masks, a painting, a scanned page and crops of
  single words are listed in NOT_PHOTOS and reported on their own row), + 40 evenly spaced frames of
  vtest.avi (a real camera): 136 images.

Both lists are written next to the results. For each recipe, export (ONNX QDQ + OpenVINO) and quantize
(PyTorch FX) run with default settings plus the recipe's options; the table shows top-1 agreement with
FP32 and top-5 containment of the FP32 top-1, from `edgekit verify`'s own rows, the p50 latency from
`edgekit bench` (1 thread) as a ratio to FP32 on the same runtime, and the share of the
evaluation images on which FP32 itself is confident (top-1 probability >= 0.5), since agreement on images
the FP32 model is unsure about is where INT8 flips most.

Usage: python benchmarks/scripts/imagenet_int8.py [--out runs/imagenet_int8] [--recipes default,depthwise,first-last,first-dw,ort,ov-accuracy]
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
    "default": {},  # NNCF on ONNX (per-tensor activations) and OpenVINO, full bias correction
    "depthwise": {"keep_float": ("depthwise",)},  # every depthwise convolution in float
    "first-last": {"keep_float": ("first", "last")},
    # the stem and every depthwise convolution in float (chosen after the per-group sweep of session 6 on these
    # same evaluation photographs, so its row is not an unbiased estimate)
    "first-dw": {"keep_float": ("first", "depthwise")},
    "ort": {"onnx_int8": "ort"},  # onnxruntime quantize_static, the first version's default
    # NNCF accuracy control on OpenVINO (agreement on the calibration images may drop 0.05); ONNX as default
    "ov-accuracy": {"ov_max_drop": 0.05},
}


# Files in the evaluation folders that are not photographs of scenes or objects: drawings, logos, renders,
# synthetic patterns, masks and ground-truth maps, a painting, a scanned page, and crops of single words or
# letters. They stay out of the evaluation set (the table also reports them on their own row, "drawings").
NOT_PHOTOS = {
    "drawing or logo": ("HappyFish.jpg", "LinuxLogo.jpg", "WindowsLogo.jpg", "opencv-logo.png",
                        "opencv-logo-white.png", "logo.png", "ml.png", "notes.png", "cards.png", "digits.png"),
    "render": ("Blender_Suzanne1.jpg", "Blender_Suzanne2.jpg"),
    "synthetic pattern": ("pic1.png", "pic2.png", "pic3.png", "pic4.png", "pic5.png", "pic6.png", "detect_blob.png",
                          "ellipses.jpg", "gradient.png", "chessboard.png", "chessboard_GRAY.png",
                          "chessboard_RGB.png", "color.png", "phantom.png", "imageTextN.png", "imageTextR.png"),
    "mask or map": ("mask.png", "aloeGT.png", "templ.png", "tmpl.png", "scenetext_segmented_word01_mask.png",
                    "scenetext_segmented_word02_mask.png", "scenetext_segmented_word03_mask.png",
                    "scenetext_segmented_word04_mask.png", "scenetext_segmented_word05_mask.png"),
    "painting or scanned page": ("starry_night.jpg", "page.png"),
    "crop of a word or letter": ("scenetext_char01.jpg", "scenetext_char02.jpg", "scenetext_char03.jpg",
                                 "scenetext_segmented_word01.jpg", "scenetext_segmented_word02.jpg",
                                 "scenetext_segmented_word03.jpg", "scenetext_segmented_word04.jpg",
                                 "scenetext_segmented_word05.jpg", "scenetext_word01.jpg", "scenetext_word02.jpg",
                                 "scenetext_word03.jpg", "scenetext_word04.jpg"),
}
EVAL_VIDEO_FRAMES = 40  # evenly spaced frames of vtest.avi (a real camera), evaluation only


def photo_sets(out: Path) -> tuple[Path, Path, Path]:
    """Calibration, evaluation and "drawings" folders under out, with their file lists written beside them."""
    import cv2
    import matplotlib
    import skimage
    import sklearn

    from edgekit.core.data import load_images

    def listed(folder: Path) -> list[Path]:
        return sorted(p for p in folder.glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))

    excluded = {name for names in NOT_PHOTOS.values() for name in names}
    found = [p for folder in (OCV / "examples/data", OCV / "examples/text", OCV / "examples/hfs/data",
                              OCV / "examples/alphamat/input_images", Path(skimage.__file__).parent / "data",
                              Path(sklearn.__file__).parent / "datasets/images",
                              Path(matplotlib.get_data_path()) / "sample_data")
             for p in listed(folder) if cv2.imread(str(p)) is not None]
    evaluation = [p for p in found if p.name not in excluded and p.name != "Minduka_Present_Blue_Pack.png"
                  and p.name != "logo2.png"]
    drawings = [p for p in found if p.name in excluded]
    manual = sorted((OCV / "opencv4/html").rglob("*.jpg"))
    manual = [p for p in manual if (lambda im: im is not None and min(im.shape[:2]) >= 96)(cv2.imread(str(p)))]
    random.Random(0).shuffle(manual)
    calib, evals, other = out / "calib", out / "eval", out / "drawings"
    for folder in (calib, evals, other):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
    for i, path in enumerate(manual[:250]):
        shutil.copy(path, calib / f"manual_{i:03d}{path.suffix}")
    for video in ("Megamind.avi", "Megamind_bugy.avi"):
        for i, frame in enumerate(load_images(OCV / "examples/data" / video, limit=25).arrays[:25]):
            cv2.imwrite(str(calib / f"{Path(video).stem}_{i:02d}.png"), frame)
    for i, path in enumerate(evaluation):
        shutil.copy(path, evals / f"{i:03d}_{path.name}")
    frames = load_images(OCV / "examples/data/vtest.avi", limit=EVAL_VIDEO_FRAMES).arrays[:EVAL_VIDEO_FRAMES]
    for i, frame in enumerate(frames):
        cv2.imwrite(str(evals / f"vtest_{i:02d}.png"), frame)
    for i, path in enumerate(drawings):
        shutil.copy(path, other / f"{i:03d}_{path.name}")
    (out / "calib.txt").write_text("\n".join(map(str, manual[:250])) + "\n+ 25 evenly spaced frames each of "
                                   "Megamind.avi and Megamind_bugy.avi\n")
    (out / "eval.txt").write_text("\n".join(map(str, evaluation)) + f"\n+ {len(frames)} evenly spaced frames of "
                                  "vtest.avi\n")
    (out / "drawings.txt").write_text("".join(f"{p}  # {kind}\n" for p in drawings
                                              for kind, names in NOT_PHOTOS.items() if p.name in names))
    return calib, evals, other


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


def edgekit(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgekit", *args], capture_output=True, text=True)


def run_recipe(name: str, options: dict, checkpoint: Path, calib: Path, evals: Path, out: Path,
               fp32_ms: dict) -> list[dict]:
    """Export (no gate, so every artifact stays to be measured), then `edgekit verify` on the evaluation images
    and `edgekit bench` (1 thread, its own process per row) for latency against FP32 on the same runtime."""
    from edgekit.export.core import ExportConfig, export
    from edgekit.training.quantize import QuantizeConfig, quantize_checkpoint

    folder = out / name
    start = time.perf_counter()
    export(ExportConfig(checkpoint=str(checkpoint), formats=("onnx", "openvino"), int8=True, calib=str(calib),
                        calib_size=300, verify=False, out=str(folder), **options))
    q = None if "ov_max_drop" in options else quantize_checkpoint(QuantizeConfig(checkpoint=str(checkpoint), calib=str(calib), data=str(evals),
                                           calib_batches=10, batch_size=30, keep_float=options.get("keep_float", ()),
                                           out=str(folder / "model_int8.pt")))
    seconds = round(time.perf_counter() - start, 1)
    artifacts = [folder / "model_int8.onnx", folder / "model_int8.xml"]
    proc = edgekit("verify", *map(str, artifacts), "--reference", str(checkpoint), "--data", str(evals), "--images",
                   "0", "--json", str(folder / "verify.json"))
    if not (folder / "verify.json").is_file():
        sys.exit(f"verify failed:\n{proc.stdout}{proc.stderr}")
    verified = {r["name"]: r for r in json.loads((folder / "verify.json").read_text())}
    latency = bench(artifacts, folder / "bench.json")
    rows = []
    for path, runtime in zip(artifacts, ("onnxruntime", "openvino")):
        r = verified[path.name]
        rows.append({"recipe": name, "artifact": path.name, "agreement": r["agreement"], "top5": r["top5"],
                     "status": r["status"], "p50_ms": latency.get(path.name),
                     "speedup": fp32_ms[runtime] / latency[path.name] if latency.get(path.name) else None})
    if q is not None:  # the OpenVINO-only recipe leaves PyTorch as in "default"
        rows.append({"recipe": name, "artifact": "PyTorch FX INT8", "agreement": q["top1_agreement"], "top5": None,
                     "status": "FAIL: " + "; ".join(q["gate_problems"]) if q["gate_problems"] else "ok",
                     "p50_ms": None, "speedup": None})
    for row in rows:
        row["seconds"] = seconds
    return rows


def bench(models: list[Path], json_path: Path) -> dict[str, float]:
    """p50 ms per model name from `edgekit bench run` (one thread, each row in its own process)."""
    proc = edgekit("bench", "run", *map(str, models), "--threads", "1", "--min-runs", "100", "--min-seconds", "5",
                   "--json", str(json_path))
    if not json_path.is_file():
        sys.exit(f"bench failed:\n{proc.stdout}{proc.stderr}")
    return {r["name"]: r["p50_ms"] for r in json.loads(json_path.read_text())["rows"] if r.get("p50_ms")}


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
    calib, evals, drawings = photo_sets(out)
    proc = subprocess.run([sys.executable, "-m", "edgekit", "import", "torchvision:mobilenet_v2", "--out",
                           str(out / "model")], capture_output=True, text=True)
    if proc.returncode:
        sys.exit(f"import failed (run `bash benchmarks/imagenet_weights.sh` first?):\n{proc.stderr}")
    checkpoint = out / "model" / "model.pt"
    facts = machine()
    fp32 = out / "fp32"
    from edgekit.export.core import ExportConfig, export

    export(ExportConfig(checkpoint=str(checkpoint), formats=("onnx", "openvino"), verify=False, out=str(fp32)))
    fp32_latency = bench([fp32 / "model.onnx", fp32 / "model.xml"], fp32 / "bench.json")
    fp32_ms = {"onnxruntime": fp32_latency["model.onnx"], "openvino": fp32_latency["model.xml"]}
    rows = []
    for name in args.recipes.split(","):
        rows += run_recipe(name, RECIPES[name], checkpoint, calib, evals, out, fp32_ms)
    drawing_rows = []
    proc = edgekit("verify", str(out / "default" / "model_int8.onnx"), str(out / "default" / "model_int8.xml"),
                   "--reference", str(checkpoint), "--data", str(drawings), "--images", "0", "--json",
                   str(out / "drawings.json"))
    if (out / "drawings.json").is_file():
        drawing_rows = [r for r in json.loads((out / "drawings.json").read_text()) if r["precision"] == "int8"]
    confident = confident_share(checkpoint, evals)
    lines = [f"# {facts['command']}", f"# CPU: {facts['cpu']}",
             f"# torch {facts['torch']}, onnxruntime {facts['onnxruntime']}, openvino {facts['openvino']}, "
             f"nncf {facts['nncf']}, python {facts['python']}",
             f"# {len(list(calib.iterdir()))} calibration images, {len(list(evals.iterdir()))} evaluation photographs "
             f"(lists: benchmarks/results/imagenet_int8_{{calib,eval}}_images.txt); FP32 top-1 probability >= 0.5 "
             f"on {confident:.0%} of them",
             f"# p50: `edgekit bench run --threads 1`, FP32 {fp32_ms['onnxruntime']:.2f} ms on onnxruntime, "
             f"{fp32_ms['openvino']:.2f} ms on OpenVINO; x fp32 = FP32 p50 on the same runtime / this p50",
             f"{'recipe':<12}{'artifact':<18}{'agree':>8}{'top5':>8}{'p50 ms':>9}{'x fp32':>8}  gate (verify)"]
    for row in rows:
        top5 = "-" if row["top5"] is None else f"{row['top5']:.3f}"
        p50 = "-" if row["p50_ms"] is None else f"{row['p50_ms']:.2f}"
        speed = "-" if row["speedup"] is None else f"{row['speedup']:.2f}x"
        lines.append(f"{row['recipe']:<12}{row['artifact']:<18}{row['agreement']:>8.3f}{top5:>8}{p50:>9}{speed:>8}  "
                     f"{row['status']}")
    for r in drawing_rows:
        lines.append(f"{'drawings':<12}{r['name']:<18}{r['agreement']:>8.3f}{r['top5']:>8.3f}{'-':>9}{'-':>8}  "
                     f"(default recipe on the {len(list(drawings.iterdir()))} non-photographs, for comparison)")
    text = "\n".join(lines)
    print(text)
    results = Path(args.results)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.with_suffix(".txt").write_text(text + "\n")
    results.with_suffix(".json").write_text(json.dumps({"machine": facts, "confident_share": confident,
                                                        "fp32_p50_ms": fp32_ms, "rows": rows,
                                                        "drawings": drawing_rows}, indent=2) + "\n")
    for kind in ("calib", "eval"):
        shutil.copy(out / f"{kind}.txt", results.parent / f"{results.name}_{kind}_images.txt")


if __name__ == "__main__":
    os.environ.setdefault("TQDM_DISABLE", "1")
    main()
