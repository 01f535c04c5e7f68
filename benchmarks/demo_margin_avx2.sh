#!/usr/bin/env bash
# The demo's INT8 steps on an x86 CPU without AVX-512, VNNI or AMX (a Haswell-class AVX2 laptop), emulated.
#
# qemu-user (`qemu-x86_64-static -cpu Haswell`) answers the CPUID instruction as a Haswell does, so numpy,
# onnxruntime, OpenVINO and PyTorch pick their AVX2 kernels, including the saturating 16-bit u8 x s8 sums
# that VNNI avoids. /proc/cpuinfo is not emulated: a private mount namespace shows the process a copy with
# the AVX-512/VNNI/AMX flags removed, so edgekit's own INT8 defaults (reduce_range) see the same CPU.
# demo_margin.py prints both views at the top of its log, as evidence of what the process ran on.
#
# It reuses the checkpoints of an earlier native `python benchmarks/demo_margin.py` run (training under
# emulation would take hours) and redoes every INT8 step on them: PyTorch INT8, ONNX QDQ, OpenVINO NNCF,
# and verification. About 25x slower than native; as root (unshare + mount), with an active venv.
#
#   bash benchmarks/demo_margin_avx2.sh [SEEDS]     (default 0,1,2,3,4)
set -euo pipefail
cd "$(dirname "$0")/.."
seeds="${1:-0,1,2,3,4}"
[[ $(id -u) -eq 0 ]] || { echo "error: needs root (a private mount namespace for /proc/cpuinfo)" >&2; exit 2; }
python=$(command -v python) || { echo "error: activate the venv with edgekit first" >&2; exit 2; }
if ! command -v qemu-x86_64-static >/dev/null; then
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q qemu-user-static
fi
cpuinfo=$(mktemp)
trap 'rm -f "$cpuinfo"' EXIT
sed -E '/^flags/ s/ (avx512[a-z0-9_]*|avx_vnni[a-z0-9_]*|amx[a-z0-9_]*)//g' /proc/cpuinfo > "$cpuinfo"
# qemu warns once per CPUID bit it cannot emulate (pcid, x2apic, ...): none of them matter to user code.
unshare -m bash -c "mount --bind '$cpuinfo' /proc/cpuinfo && exec qemu-x86_64-static -cpu Haswell '$python' \
  benchmarks/demo_margin.py --reuse --seeds '$seeds' --json benchmarks/results/demo_margin_avx2.json" \
  2> >(grep -v "TCG doesn't support requested feature" >&2)
