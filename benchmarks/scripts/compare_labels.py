"""Labels of two `edgekit run` outputs, image by image: REFERENCE/<model>/ against CANDIDATE/<model>/ for
every model folder REFERENCE holds (runs with --smooth none --hold 1, so each label change is an event).
Usage: python benchmarks/scripts/compare_labels.py REFERENCE CANDIDATE WHAT [--optional] [--frames N]
                                                   [--min-agreement-int8 A]
Prints one line per model, "labels MODEL: WHAT equal on K of N images"; exits 1 unless all are equal (for
models named *int8*, at least A of them when --min-agreement-int8 is given: another onnxruntime version has
other INT8 kernels). With --optional a model missing from CANDIDATE is skipped instead of failing."""
import argparse
import json
import sys
from pathlib import Path


def labels(folder: Path) -> list:
    events = [json.loads(line) for line in (folder / "events.jsonl").read_text().splitlines()]
    frames = json.loads((folder / "summary.json").read_text())["frames"]
    changes = {e["frame"]: e["label"] for e in events if e["type"] == "label"}
    out, current = [], None
    for i in range(frames):
        current = changes.get(i, current)
        out.append(current)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("reference", type=Path)
    parser.add_argument("candidate", type=Path)
    parser.add_argument("what")
    parser.add_argument("--optional", action="store_true")
    parser.add_argument("--frames", type=int, default=200)
    parser.add_argument("--min-agreement-int8", type=float, default=1.0)
    args = parser.parse_args()
    ok = True
    for host in sorted(p for p in args.reference.iterdir() if p.is_dir()):
        other = args.candidate / host.name
        if not other.is_dir():
            if args.optional:
                continue
            print(f"labels {host.name}: {args.what}: no run in {other}")
            ok = False
            continue
        a, b = labels(host), labels(other)
        same = sum(x == y for x, y in zip(a, b))
        need = args.min_agreement_int8 if "int8" in host.name else 1.0
        ok &= len(a) == len(b) == args.frames and same >= need * len(a)
        print(f"labels {host.name}: {args.what} equal on {same} of {len(a)} images"
              + (f" (at least {need:.0%} asked)" if need < 1 else ""))
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
