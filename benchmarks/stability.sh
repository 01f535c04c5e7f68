#!/usr/bin/env bash
# Are two consecutive `edgekit bench` runs close enough to compare? Runs the MobileNetV2@160 models of
# benchmarks/latency_targets.sh twice, back to back, and prints `edgekit bench compare` (B/A ratios; the
# acceptance is p50 within 10 %). Results: benchmarks/results/stability_*.
# Usage: bash benchmarks/stability.sh   (after benchmarks/latency_targets.sh; a quiet machine)
set -euo pipefail
DIR=${DIR:-runs/latency/mobilenet_v2_160}
RES=benchmarks/results
for run in a b; do
  edgekit bench "$DIR/model.pt" "$DIR/model_int8.pt" "$DIR/model.onnx" "$DIR/model_int8.onnx" "$DIR/model.xml" \
    "$DIR/model_int8.xml" --threads 2 --min-runs 300 --min-seconds 10 --json "$RES/stability_$run.json" > /dev/null
done
edgekit bench compare "$RES/stability_a.json" "$RES/stability_b.json" | tee "$RES/stability_compare.txt"
