"""The distillation study of benchmarks/compression.sh (step kd_mnv3): a MobileNetV3-Small student trained
alone and distilled from the MobileNetV2 teacher, same seed, data and epochs, for several seeds. Prints one
table (test accuracy on the 10,000 official Fashion-MNIST test images) and whether the mean difference is
larger than the seed-to-seed spread; writes it as JSON too.
Usage: python benchmarks/scripts/kd_seeds.py RUNS_FOLDER OUT.json   (RUNS_FOLDER/{alone,kd}_seed<N>/metrics.json)"""
import json
import statistics
import sys
from pathlib import Path

root, out = Path(sys.argv[1]), Path(sys.argv[2])
seeds = sorted(int(p.name.split("seed")[1]) for p in root.glob("alone_seed*") if (p / "metrics.json").is_file())
rows = []
for seed in seeds:
    alone = json.loads((root / f"alone_seed{seed}" / "metrics.json").read_text())
    kd_path = root / f"kd_seed{seed}" / "metrics.json"
    if not kd_path.is_file():
        sys.exit(f"error: {kd_path} missing: every seed needs both runs")
    kd = json.loads(kd_path.read_text())
    rows.append({"seed": seed, "alone": alone["accuracy"], "kd": kd["accuracy"], "samples": alone["samples"],
                 "teacher": kd["config"].get("teacher"), "kd_temperature": kd["config"].get("kd_temperature"),
                 "kd_alpha": kd["config"].get("kd_alpha")})
if len(rows) < 2:
    sys.exit("error: need at least two seeds to measure a spread")
alone = [r["alone"] for r in rows]
kd = [r["kd"] for r in rows]
diffs = [k - a for a, k in zip(alone, kd)]
spread = max(max(alone) - min(alone), max(kd) - min(kd))  # seed-to-seed range of either arm
mean_diff = statistics.mean(diffs)
print(f"MobileNetV3-Small on Fashion-MNIST, test accuracy on {rows[0]['samples']} images; teacher "
      f"{rows[0]['teacher']} (T {rows[0]['kd_temperature']}, alpha {rows[0]['kd_alpha']})")
print(f"{'seed':>4}  {'alone':>7}  {'distilled':>9}  {'diff pp':>7}")
for r, d in zip(rows, diffs):
    print(f"{r['seed']:>4}  {r['alone']:7.4f}  {r['kd']:9.4f}  {100 * d:+7.2f}")
print(f"mean  {statistics.mean(alone):7.4f}  {statistics.mean(kd):9.4f}  {100 * mean_diff:+7.2f}")
print(f"std   {statistics.stdev(alone):7.4f}  {statistics.stdev(kd):9.4f}  {100 * statistics.stdev(diffs):7.2f}")
verdict = ("larger than" if abs(mean_diff) > spread else "within")
print(f"mean difference {100 * mean_diff:+.2f} pp is {verdict} the seed-to-seed spread ({100 * spread:.2f} pp, the "
      f"largest max-min range of either arm over {len(rows)} seeds); distillation "
      + ("helped" if mean_diff > 0 else "did not help") + " on average, and in "
      f"{sum(d > 0 for d in diffs)} of {len(rows)} seeds")
out.write_text(json.dumps({"rows": rows, "mean_diff": mean_diff, "spread": spread, "verdict": verdict}, indent=1))
