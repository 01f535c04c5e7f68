"""Does `edgekit train --nproc 2` learn what one process learns? The demo recipe on the embedded data set
(real Fashion-MNIST images shipped in the package), three seeds each way, test accuracy compared with the
seed-to-seed spread.

Usage: python benchmarks/scripts/ddp_seeds.py [--seeds 0,1,2] [--epochs 12] [--out runs/ddp_seeds]
Writes benchmarks/results/train_nproc.{txt,json} unless --results says otherwise.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
from dataclasses import replace
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", default="runs/ddp_seeds")
    parser.add_argument("--results", default="benchmarks/results/train_nproc")
    args = parser.parse_args()
    import logging

    import torch

    from edgekit.training.demo import demo_train_config
    from edgekit.training.trainer import train

    logging.basicConfig(level=logging.WARNING)
    seeds = [int(s) for s in args.seeds.split(",")]
    runs = {}
    for nproc in (1, 2):
        for seed in seeds:
            cfg = replace(demo_train_config(f"{args.out}/nproc{nproc}_seed{seed}", epochs=args.epochs, seed=seed),
                          nproc=nproc, threads=2 if nproc == 1 else 1)
            result = train(cfg)
            runs[f"{nproc}/{seed}"] = {"nproc": nproc, "seed": seed, "accuracy": result["report"]["accuracy"],
                                       "epochs": len(result["history"]),
                                       "train_seconds": round(result["report"]["train_seconds"], 1)}
            print(json.dumps(runs[f"{nproc}/{seed}"]), flush=True)
    summary = {}
    for nproc in (1, 2):
        accs = [r["accuracy"] for r in runs.values() if r["nproc"] == nproc]
        summary[nproc] = {"mean": statistics.mean(accs), "std": statistics.stdev(accs) if len(accs) > 1 else 0.0,
                          "min": min(accs), "max": max(accs)}
    diff = summary[2]["mean"] - summary[1]["mean"]
    spread = max(summary[1]["max"] - summary[1]["min"], summary[2]["max"] - summary[2]["min"])
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "")
    lines = [f"# {os.path.basename(sys.executable)} {' '.join(sys.argv)}",
             f"# CPU: {cpu}, {os.cpu_count()} cpus; torch {torch.__version__}; python {platform.python_version()}",
             f"# demo recipe (edgekit.training.demo), {args.epochs} epochs, embedded Fashion-MNIST subset; "
             "1 process x 2 threads vs 2 processes x 1 thread (gloo), same global batch",
             "# train seconds are printed for the record, not as a speed comparison: on 2 cores, two processes",
             "# of one thread do the work of one process of two threads, and the machine was shared",
             f"{'nproc':>5} {'seed':>4} {'test acc':>8} {'epochs':>6} {'train s':>8}"]
    lines += [f"{r['nproc']:>5} {r['seed']:>4} {r['accuracy']:>8.4f} {r['epochs']:>6} {r['train_seconds']:>8.1f}"
              for r in runs.values()]
    for nproc in (1, 2):
        s = summary[nproc]
        lines.append(f"nproc {nproc}: mean {s['mean']:.4f} +- {s['std']:.4f} (min {s['min']:.4f}, max {s['max']:.4f})")
    lines.append(f"difference of means (2 - 1): {100 * diff:+.2f} pp; largest seed-to-seed range in either: "
                 f"{100 * spread:.2f} pp -> {'within' if abs(diff) <= spread else 'OUTSIDE'} the spread")
    text = "\n".join(lines)
    print(text)
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results + ".txt").write_text(text + "\n")
    Path(args.results + ".json").write_text(json.dumps({"runs": list(runs.values()), "summary": summary,
                                                         "difference": diff, "spread": spread}, indent=2) + "\n")


if __name__ == "__main__":
    main()
