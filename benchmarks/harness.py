"""`edgekit bench`: one latency/accuracy/size table across models, runtimes, precisions and thread counts.

Every row runs in its own process (benchmarks/worker.py), one after another, never two at once. Rows are
ratios' raw material: compare rows of one run (same machine, same minute), and compare machines with
`edgekit bench compare A.json B.json`. Nothing here imports torch, onnxruntime or openvino.
"""
from __future__ import annotations

import csv
import importlib.util
import json
import os
import platform
import subprocess
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

from edgekit.core import checks
from edgekit.core.errors import BadInputError, EdgekitError
from edgekit.runtimes.base import FORMAT_RUNTIMES, RuntimeOptions, detect_format, model_size_bytes, resolve_runtime
from edgekit.core import jsonio

# The framework each backend needs, and the extra that installs it.
BACKEND_PACKAGES = {"pytorch": ("torch", "train"), "onnxruntime": ("onnxruntime", "onnx"),
                    "openvino": ("openvino", "openvino")}
ISA_FLAGS = ("sse4_2", "avx2", "fma", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_tile", "amx_int8",
             "amx_bf16", "asimd", "asimddp", "i8mm", "sve", "bf16")
PACKAGES = ("edgekit", "numpy", "torch", "torchvision", "onnxruntime", "openvino", "nncf", "opencv-python-headless")


@dataclass(frozen=True)
class BenchConfig:
    models: tuple[str, ...]
    runtimes: tuple[str, ...] = ()  # empty: each model's natural runtime; "all": every runtime that opens it
    threads: tuple[int, ...] = (2,)
    batch: int = 1
    data: str | None = None
    images: int = 0  # test images for accuracy (0 = the whole test split)
    warmup: int = 10
    min_runs: int = 100
    min_seconds: float = 3.0
    timeout: float = 900.0  # per row
    seed: int = 0
    requests: int = 0  # > 0: also measure throughput with this many inferences in flight
    baseline: str = "reference"  # "reference" (same threads) or "fastest" (the reference model's best row)
    options: dict = field(default_factory=dict)  # RuntimeOptions fields other than threads/batch

    def __post_init__(self) -> None:
        if not self.models:
            raise BadInputError("give at least one model file")
        for count in self.threads:
            checks.threads("--threads", count, allow_default=False)
        checks.within("--min-runs", self.min_runs, 1, 10**7)
        checks.within("--min-seconds", self.min_seconds, 0, 86_400)
        checks.within("--warmup", self.warmup, 0, 10**6)
        checks.at_least("--images", self.images, 0)
        checks.within("--timeout", self.timeout, 0, 86_400, low_open=True)
        checks.within("--requests", self.requests, 0, 256)
        checks.one_of("--baseline", self.baseline, ("reference", "fastest"))
        RuntimeOptions(batch=self.batch, **self.options)  # validate the backend knobs before any row runs


def environment(argv: list[str] | None = None) -> dict:
    """What made the numbers: CPU, cores, ISA flags, OS, Python, package versions and the command."""
    from importlib import metadata

    from edgekit.core.hardware import cpu_flags

    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text(errors="replace").splitlines():
            if line.split(":")[0].strip() in ("model name", "Model"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    versions = {}
    for package in PACKAGES:
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    flags = cpu_flags()
    return {"cpu": model, "machine": platform.machine(), "logical_cpus": os.cpu_count(),
            "usable_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "isa": [f for f in ISA_FLAGS if f in flags], "os": platform.platform(), "python": platform.python_version(),
            "packages": versions, "command": _command(argv if argv is not None else sys.argv)}


def _command(argv: list[str]) -> str:
    """The command as the user would type it (`edgekit bench ...`, not the venv's full script path)."""
    return " ".join([Path(argv[0]).name, *argv[1:]]) if argv else ""


def installed(package: str) -> bool:
    """Whether ``package`` can be imported, without importing it (the parent process stays light)."""
    try:
        return importlib.util.find_spec(package) is not None
    except ValueError:  # sys.modules[package] is None: deliberately blocked
        return False


def plan(cfg: BenchConfig) -> list[dict]:
    """One entry per (model, runtime, threads); problems found before running become failed/skipped rows."""
    rows = []
    for model in cfg.models:
        try:
            fmt = detect_format(model)
        except BadInputError as exc:
            rows.append(_row(model, "-", 0, cfg, status="failed", reason=str(exc)))
            continue
        if not cfg.runtimes:
            names = [FORMAT_RUNTIMES[fmt][0]]
        elif cfg.runtimes == ("all",):
            names = list(FORMAT_RUNTIMES[fmt])
        else:
            names = [resolve_runtime(r) for r in cfg.runtimes]
        for name in names:
            for threads in cfg.threads:
                row = _row(model, name, threads, cfg, fmt=fmt, size_mb=model_size_bytes(model) / 1e6)
                package, extra = BACKEND_PACKAGES[name]
                if name not in FORMAT_RUNTIMES[fmt]:
                    row.update(status="skipped", reason=f"{name} cannot run {fmt} models")
                elif not installed(package):
                    row.update(status="skipped", reason=f"{package} is not installed (pip install \"edgekit[{extra}]\")")
                rows.append(row)
    return rows


def _row(model: str, runtime: str, threads: int, cfg: BenchConfig, **extra) -> dict:
    return {"model": str(model), "name": Path(model).name, "runtime": runtime, "threads": threads,
            "batch": cfg.batch, "status": "pending", "reason": "", **extra}


def run_row(row: dict, cfg: BenchConfig, evaluate: bool) -> dict:
    """Measure one row in a fresh interpreter and merge its result into ``row``."""
    options = RuntimeOptions(threads=row["threads"], batch=cfg.batch, **cfg.options).to_dict()
    job = {"model": row["model"], "runtime": row["runtime"], "options": options, "warmup": cfg.warmup,
           "min_runs": cfg.min_runs, "min_seconds": cfg.min_seconds, "data": cfg.data, "images": cfg.images,
           "seed": cfg.seed, "evaluate": evaluate, "requests": cfg.requests}
    env = dict(os.environ)
    # OpenMP pools (torch) size themselves from this; set it so no backend starts more threads than asked.
    env["OMP_NUM_THREADS"] = str(row["threads"])
    try:
        proc = subprocess.run([sys.executable, "-m", "edgekit.benchmarks.worker"], input=json.dumps(job),
                              capture_output=True, text=True, timeout=cfg.timeout, env=env)
    except subprocess.TimeoutExpired:
        row.update(status="failed", reason=f"timed out after {cfg.timeout:.0f} s")
        return row
    lines = proc.stdout.strip().splitlines()
    try:
        result = json.loads(lines[-1]) if lines else None
    except json.JSONDecodeError:
        result = None
    if proc.returncode != 0 or not isinstance(result, dict):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        row.update(status="failed", reason=f"worker exited with code {proc.returncode}: {tail[:200]}")
        return row
    row.update(result)
    return row


def _pick_reference(rows: list[dict]) -> dict | None:
    """PyTorch FP32 when present (the training framework is the ground truth), else the first FP32 row."""
    ok = [r for r in rows if r["status"] == "ok" and r.get("precision") == "fp32"]
    torch_rows = [r for r in ok if r["runtime"] == "pytorch"]
    return (torch_rows or ok or [None])[0]


def finish(rows: list[dict], baseline: str = "reference") -> None:
    """Copy accuracy across thread counts, then add accuracy delta, top-1 agreement and speedup vs the reference.

    ``baseline`` "reference": each row against the reference model at the row's own thread count;
    "fastest": every row against the reference model's fastest measured row (lowest p90 over its thread
    counts), since more threads are not always faster (PyTorch at 2 threads was slower than at 1 here)."""
    import numpy as np

    evaluated = {(r["model"], r["runtime"]): r for r in rows if "predictions" in r}
    for r in rows:
        source = evaluated.get((r["model"], r["runtime"]))
        if r["status"] == "ok" and source is not None and source is not r:
            for key in ("accuracy", "predictions", "eval_images"):
                if key in source:
                    r[key] = source[key]
    reference = _pick_reference(rows)
    for r in rows:
        r["reference"] = r is reference
        if r["status"] != "ok" or reference is None:
            continue
        candidates = [x for x in rows if x.get("precision") == "fp32" and x["runtime"] == reference["runtime"]
                      and x["model"] == reference["model"] and x["status"] == "ok"
                      and (baseline == "fastest" or x["threads"] == r["threads"])]
        if candidates:
            base = min(candidates, key=lambda x: x["p90_ms"])
            r["speedup_p90"] = base["p90_ms"] / r["p90_ms"]
            r["baseline_threads"] = base["threads"]
        if "accuracy" in r and "accuracy" in reference:
            r["delta_pp"] = 100 * (r["accuracy"] - reference["accuracy"])
        if "predictions" in r and "predictions" in reference and len(r["predictions"]) == len(reference["predictions"]):
            r["agreement"] = float(np.mean(np.asarray(r["predictions"]) == np.asarray(reference["predictions"])))


def bench(cfg: BenchConfig, progress=None) -> dict:
    rows = plan(cfg)
    runnable = [r for r in rows if r["status"] == "pending"]
    if not runnable:
        reasons = [r["reason"] for r in rows]
        raise BadInputError(reasons[0] if len(set(reasons)) == 1 else "nothing to run: " + "; ".join(dict.fromkeys(reasons)))
    evaluated: set = set()
    for i, row in enumerate(runnable, 1):
        key = (row["model"], row["runtime"])
        run_row(row, cfg, evaluate=bool(cfg.data) and key not in evaluated)
        if row["status"] == "ok":
            evaluated.add(key)
        if progress:
            progress(i, len(runnable), row)
    finish(rows, cfg.baseline)
    return {"environment": environment(), "config": asdict(cfg), "rows": rows}


# --- output --------------------------------------------------------------------------------------------
COLUMNS = (  # (header, key, format)
    ("model", "name", "{}"), ("runtime", "runtime", "{}"), ("prec", "precision", "{}"), ("thr", "threads", "{}"),
    ("bs", "batch", "{}"), ("size MB", "size_mb", "{:.2f}"), ("acc", "accuracy", "{:.4f}"),
    ("Δ pp", "delta_pp", "{:+.2f}"), ("agree", "agreement", "{:.4f}"), ("load s", "session_s", "{:.2f}"),
    ("1st ms", "first_ms", "{:.1f}"), ("p50 ms", "p50_ms", "{:.2f}"), ("p90 ms", "p90_ms", "{:.2f}"),
    ("p99 ms", "p99_ms", "{:.2f}"), ("FPS", "fps", "{:.0f}"), ("RSS MB", "peak_rss_mb", "{:.0f}"),
    ("x ref p90", "speedup_p90", "{:.2f}"), ("req", "requests", "{}"), ("thru FPS", "throughput_fps", "{:.0f}"),
    ("status", "status", "{}"),
)
THROUGHPUT_KEYS = ("requests", "throughput_fps")


def columns(rows: list[dict]) -> tuple:
    """COLUMNS, without the throughput ones when no row measured throughput."""
    if any(r.get("throughput_fps") is not None for r in rows):
        return COLUMNS
    return tuple(c for c in COLUMNS if c[1] not in THROUGHPUT_KEYS)


def _cells(row: dict, cols: tuple = COLUMNS) -> list[str]:
    cells = []
    for _, key, fmt in cols:
        value = row.get(key)
        if key == "status" and row["status"] != "ok":
            value = f"{row['status']}: {row['reason']}"
        elif key == "status" and row.get("reference"):
            value = "ok (reference)"
        elif key == "batch" and row.get("chunked_by"):  # not a real batch: the model takes chunked_by at a time
            value = f"{value}={value // row['chunked_by']}x{row['chunked_by']}"
        cells.append("-" if value is None else fmt.format(value))
    return cells


def reference_line(result: dict) -> str:
    """What "x ref p90" divides: which model, runtime and thread count."""
    reference = next((r for r in result["rows"] if r.get("reference")), None)
    if reference is None:
        return "x ref p90: no FP32 reference row"
    who = f"{reference['name']} on {reference['runtime']}"
    if result["config"].get("baseline") == "fastest":
        threads = {r.get("baseline_threads") for r in result["rows"] if r.get("baseline_threads")}
        return (f"x ref p90 = p90 of the fastest {who} row ({', '.join(map(str, sorted(threads)))} thread(s)) "
                f"/ row p90")
    return f"x ref p90 = p90 of {who} at the row's thread count / row p90"


def format_table(result: dict) -> str:
    cols = columns(result["rows"])
    header = [h for h, _, _ in cols]
    body = [_cells(r, cols) for r in result["rows"]]
    widths = [max(len(header[i]), *(len(b[i]) for b in body)) if i < len(header) - 1 else 0
              for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) if i < 3 else c.rjust(w) for i, (c, w) in enumerate(zip(line, widths))).rstrip()
             for line in [header, *body]]
    env = result["environment"]
    lines.insert(0, f"{env['cpu']} | {env['usable_cpus']} cpus | {' '.join(env['isa'])} | Python {env['python']}")
    cfg = result["config"]
    lines.append(f"single stream, batch {cfg['batch']}: {cfg['warmup']} warm-up runs, then >= {cfg['min_runs']} runs "
                 f"and >= {cfg['min_seconds']:g} s per row; each row in its own process")
    lines.append(reference_line(result))
    if cfg.get("requests"):
        lines.append(f"thru FPS: images/s with {cfg['requests']} inferences in flight for >= "
                     f"{max(cfg['min_seconds'], 1):g} s (OpenVINO AsyncInferQueue; onnxruntime and PyTorch: one "
                     f"thread per request); OpenVINO runs requests in parallel only with several streams (--hint "
                     f"THROUGHPUT)")
    clips = [r for r in result["rows"] if r.get("p50_ms_per_frame") is not None]
    if clips:
        lines.append("clip models: a run is one clip (FPS = clips/s); p50 per frame = p50 / frames: " + ", ".join(
            f"{r['name']} {r['runtime']} {r['p50_ms_per_frame']:.3f} ms ({r['clip_frames']} frames)" for r in clips))
    if any(r.get("chunked_by") for r in result["rows"]):
        lines.append("bs 4=4x1: the model's graph takes 1 image at a time, so a batch of 4 is 4 calls (not batched)")
    return "\n".join(lines)


def format_markdown(result: dict) -> str:
    cols = columns(result["rows"])
    header = [h for h, _, _ in cols]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(c.replace("|", "/") for c in _cells(r, cols)) + " |" for r in result["rows"]]
    env = result["environment"]
    lines += ["", f"Machine: {env['cpu']}, {env['usable_cpus']} CPUs ({', '.join(env['isa'])}), {env['os']}.",
              reference_line(result), f"Command: `{env['command']}`"]
    return "\n".join(lines) + "\n"


def write_csv(result: dict, path: Path) -> None:
    keys = ["model", "runtime", "precision", "threads", "batch", "status", "reason", "size_mb", "accuracy",
            "delta_pp", "agreement", "import_s", "session_s", "first_ms", "runs", "p50_ms", "p90_ms", "p99_ms",
            "mean_ms", "fps", "peak_rss_mb", "speedup_p90", "requests", "throughput_fps"]
    with open(path, "w", newline="") as fh:
        writer = csv.DictWriter(fh, keys, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(result["rows"])


def write_json(result: dict, path: Path) -> None:
    slim = {**result, "rows": [{k: v for k, v in r.items() if k != "predictions"} for r in result["rows"]]}
    jsonio.write(path, slim, indent=2)


def point_label(row: dict, rows: list[dict]) -> str:
    """What the plot writes next to a row's point: file name, runtime, precision, threads; with the folder
    when several models share a file name (model.onnx of two checkpoints)."""
    shared = sum(r["name"] == row["name"] for r in rows) > 1
    name = f"{Path(row['model']).parent.name}/{row['name']}" if shared else row["name"]
    return f"{name}: {row['runtime']} {row.get('precision', '')} t{row['threads']}"


def plot(result: dict, path: Path) -> None:
    """Latency (p90) against accuracy, marker area proportional to model size."""
    try:
        import matplotlib
    except ImportError as exc:
        from edgekit.core.errors import MissingExtraError

        raise MissingExtraError("matplotlib", "train", "the benchmark plot") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    rows = [r for r in result["rows"] if r["status"] == "ok"]
    with_acc = all("accuracy" in r for r in rows)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    ordered = sorted(rows, key=lambda r: r["p90_ms"])
    for i, r in enumerate(ordered):  # neighbours on x alternate label sides: fewer overlaps
        y = 100 * r["accuracy"] if with_acc else r["size_mb"]
        ax.scatter(r["p90_ms"], y, s=40 + 30 * r["size_mb"], alpha=0.6)
        right_half = i >= len(ordered) / 2  # the slower half writes to the left of its point, inside the frame
        ax.annotate(point_label(r, rows), (r["p90_ms"], y), fontsize=7, ha="right" if right_half else "left",
                    xytext=(-6 if right_half else 6, 6 if i % 2 == 0 else -12), textcoords="offset points")
    ax.set_xscale("log")  # runtimes differ by 10x; a linear axis squeezes the fast ones together
    ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.xaxis.set_minor_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
    ax.set_xlabel("p90 latency, ms, log scale (batch %d)" % result["config"]["batch"])
    ax.set_ylabel("accuracy, %" if with_acc else "size, MB")
    ax.set_title(f"{result['environment']['cpu']}  (marker area ~ size)", fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


# --- compare -------------------------------------------------------------------------------------------
def load_result(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise BadInputError(f"benchmark result not found: {path}")
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"{path} is not a benchmark JSON file: {exc}") from exc
    if not isinstance(data, dict) or "rows" not in data or "environment" not in data:
        raise BadInputError(f"{path} is not an `edgekit bench --json` file (no rows/environment)")
    rows, env = data["rows"], data["environment"]
    needed = {"name": str, "runtime": str, "threads": int, "batch": int, "status": str}
    if not isinstance(env, dict) or not isinstance(rows, list) or not all(
            isinstance(r, dict) and all(isinstance(r.get(k), t) for k, t in needed.items()) for r in rows):
        raise BadInputError(f"{path}: rows/environment do not have the shape `edgekit bench --json` writes")
    for row in rows:
        if row["status"] == "ok" and not all(isinstance(row.get(k), (int, float)) and row[k] > 0
                                             for k in ("p50_ms", "p90_ms")):
            raise BadInputError(f"{path}: an ok row without positive p50_ms/p90_ms ({row['name']})")
    return data


def compare(a: dict, b: dict, names: tuple[str, str] = ("A", "B")) -> tuple[str, list[dict]]:
    """Rows present in both, matched on (model file name, runtime, precision, threads, batch); ratio = B / A."""
    def key(r):
        return (r["name"], r["runtime"], r.get("precision"), r["threads"], r["batch"])

    index_b = {key(r): r for r in b["rows"] if r["status"] == "ok"}
    pairs = []
    for ra in a["rows"]:
        rb = index_b.get(key(ra))
        if ra["status"] == "ok" and rb is not None:
            pairs.append({"model": ra["name"], "runtime": ra["runtime"], "precision": ra.get("precision"),
                          "threads": ra["threads"], **{f"{m}_{s}": r[f"{m}_ms"] for m in ("p50", "p90")
                                                      for s, r in (("a", ra), ("b", rb))},
                          "p50_ratio": rb["p50_ms"] / ra["p50_ms"], "p90_ratio": rb["p90_ms"] / ra["p90_ms"]})
    if not pairs:
        raise EdgekitError("the two results have no ok rows in common (same model file, runtime, precision, threads)")
    lines = [f"{names[0]}: {a['environment'].get('cpu', '?')} ({a['environment'].get('usable_cpus', '?')} cpus)",
             f"{names[1]}: {b['environment'].get('cpu', '?')} ({b['environment'].get('usable_cpus', '?')} cpus)",
             f"{'model':<24}{'runtime':<13}{'prec':<6}{'thr':>4}{'p50 A':>9}{'p50 B':>9}{'B/A':>7}"
             f"{'p90 A':>9}{'p90 B':>9}{'B/A':>7}"]
    for p in pairs:
        lines.append(f"{p['model'][:23]:<24}{p['runtime']:<13}{str(p['precision']):<6}{p['threads']:>4}"
                     f"{p['p50_a']:>9.2f}{p['p50_b']:>9.2f}{p['p50_ratio']:>7.2f}"
                     f"{p['p90_a']:>9.2f}{p['p90_b']:>9.2f}{p['p90_ratio']:>7.2f}")
    return "\n".join(lines), pairs
