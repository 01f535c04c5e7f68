#!/usr/bin/env bash
# The Raspberry Pi path, emulated: a Debian bookworm arm64 root file system (what Raspberry Pi OS 64-bit is
# built on) run under qemu-user as a Cortex-A72 (Pi 4), with an ARM /proc/cpuinfo. Inside it: install an
# `edgekit export --bundle pi` bundle from PyPI's aarch64 wheels, then `uname -m`, versions, `edgekit doctor`,
# `edgekit run` on a short real video and an `edgekit bench` smoke test; the labels are compared with the
# same bundle run on this x86 host (identical for FP32; INT8 within quantization tolerance).
#
# Usage (root, repository root, venv with edgekit[all] active; the bundle is made if missing):
#   bash benchmarks/pi_emulated.sh [BUNDLE]          log: benchmarks/results/pi_emulated.log
# Needs: qemu-user-static, debootstrap (tools/system-packages.sh --benchmarks), root (binfmt_misc, chroot,
# mounts), Debian's mirror and PyPI. The root file system is cached in $ROOTFS (about 6 minutes the first
# time, seconds after). Why not in CI: it needs root and kernel binfmt_misc (a CI container usually has
# neither) and the emulated pip install + runs take minutes; the log it writes is committed instead.
set -euo pipefail
BUNDLE=${1:-runs/pi_bundle}
ROOTFS=${ROOTFS:-/var/cache/edgekit/pi-bookworm-arm64}
LOG=${LOG:-benchmarks/results/pi_emulated.log}
MODEL=${MODEL:-runs/fashion_mnist/model.pt}  # the Fashion-MNIST model of benchmarks/fashion_mnist.sh
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
VIDEO=/usr/share/doc/opencv-doc/examples/data/Megamind.avi
[[ $(id -u) -eq 0 ]] || { echo "error: run as root (chroot, mounts, binfmt_misc)" >&2; exit 1; }
for tool in qemu-aarch64-static debootstrap; do
  command -v $tool >/dev/null || { echo "error: $tool missing: bash tools/system-packages.sh --benchmarks" >&2; exit 1; }
done
[[ -f $VIDEO ]] || { echo "error: $VIDEO missing: bash tools/system-packages.sh" >&2; exit 1; }

# 1. binfmt_misc: let the kernel hand aarch64 binaries to qemu (F flag: works inside the chroot).
[[ -f /proc/sys/fs/binfmt_misc/register ]] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
[[ -f /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || { echo "error: could not register qemu-aarch64 with binfmt_misc" >&2; exit 1; }

# 2. The root file system, cached.
if [[ ! -x $ROOTFS/usr/bin/python3 ]]; then
  mkdir -p "$(dirname "$ROOTFS")"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates,libgl1,libglib2.0-0 \
    bookworm "$ROOTFS" http://deb.debian.org/debian
fi

# 3. The bundle (host side), a short clip (the first 48 frames of Megamind.avi) and 200 real Fashion-MNIST
#    test images as PNG files: the inputs both machines classify.
if [[ ! -f $BUNDLE/requirements.txt ]]; then
  edgekit export "$MODEL" --format onnx --int8 --bundle pi --out "$BUNDLE" --data "$DATA"
fi
python benchmarks/scripts/pi_inputs.py "$VIDEO" "$DATA" "$BUNDLE"

# 4. Host reference: the same models on the same images on x86.
rm -rf "$BUNDLE/host_out"
for m in "$BUNDLE"/models/*.onnx; do
  n=$(basename "$m" .onnx)
  edgekit run --model "$m" --source "$BUNDLE/images" --smooth none --hold 1 --no-save-video \
    --out "$BUNDLE/host_out/$n" >/dev/null 2>&1
done

# 5. Into the chroot: ARM /proc/cpuinfo (onnxruntime reads it; qemu 7.2 passes the host's x86 one through).
mkdir -p "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev" "$ROOTFS/tmp" "$ROOTFS/bundle"
for core in 0 1; do  # two Cortex-A72 cores (part 0xd08), the Pi 4's feature flags: no asimddp
  printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: fp asimd evtstrm crc32 cpuid\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x0\nCPU part\t: 0xd08\nCPU revision\t: 3\n\n' $core
done > "$ROOTFS/tmp/cpuinfo"
cat >> "$ROOTFS/tmp/cpuinfo" <<'EOF'
Hardware	: BCM2835
Model		: Raspberry Pi 4 Model B (emulated: qemu-user, QEMU_CPU=cortex-a72)
EOF
cleanup() {
  for m in proc/cpuinfo proc sys dev bundle; do umount "$ROOTFS/$m" 2>/dev/null || true; done
}
trap cleanup EXIT
mount -t proc proc "$ROOTFS/proc"
mount --bind "$ROOTFS/tmp/cpuinfo" "$ROOTFS/proc/cpuinfo"
mount --bind /sys "$ROOTFS/sys"
mount --bind /dev "$ROOTFS/dev"
mount --bind "$BUNDLE" "$ROOTFS/bundle"
cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
# pip inside trusts what this host trusts (a proxy's CA, if any) and uses the same index.
cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$ROOTFS/etc/ssl/certs/host-ca-bundle.crt"

mkdir -p "$(dirname "$LOG")"
QEMU_CPU=cortex-a72 chroot "$ROOTFS" /usr/bin/env -i PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
  PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt PIP_INDEX_URL="${PIP_INDEX_URL:-https://pypi.org/simple}" \
  /bin/bash -euo pipefail -c '
cd /bundle
echo "# emulated with qemu-user on an x86_64 host: the timings below say nothing about a real Pi; the point is"
echo "# that the aarch64 wheels install and run, and that the predictions match the host"
echo "\$ uname -m: $(uname -m)"
echo "\$ python3: $(python3 --version)"
grep -m1 "^Model" /proc/cpuinfo
start=$(date +%s)
[ -x /opt/edgekit/bin/python ] || python3 -m venv /opt/edgekit
. /opt/edgekit/bin/activate
pip install -q --disable-pip-version-check -r requirements.txt
pip install -q --disable-pip-version-check --no-deps --force-reinstall wheels/*.whl
echo "install: $(( $(date +%s) - start )) s (aarch64 wheels from PyPI, emulated)"
pip list --format=freeze 2>/dev/null | grep -iE "^(edgekit|onnxruntime|numpy|opencv-python-headless|click)=="
python -c "import torch" 2>/dev/null && { echo "torch is importable: the device install pulled it"; exit 1; } || echo "torch: not installed (as intended)"
echo "\$ edgekit doctor models/model_int8.onnx"
edgekit doctor models/model_int8.onnx --camera 99 || true
rm -rf pi_out
for m in models/*.onnx; do
  n=$(basename "$m" .onnx)
  echo "\$ edgekit run --model $m --source images --smooth none --hold 1   (200 Fashion-MNIST test images)"
  edgekit run --model "$m" --source images --smooth none --hold 1 --no-save-video --out "pi_out/$n" 2>&1 | tail -3
done
echo "\$ edgekit run --model models/model_int8.onnx --source clip.avi   (48 frames of Megamind.avi)"
edgekit run --model models/model_int8.onnx --source clip.avi --out pi_out/clip 2>&1 | tail -9
echo "\$ edgekit bench models/*.onnx --min-runs 20 --min-seconds 2 --warmup 3"
edgekit bench models/*.onnx --min-runs 20 --min-seconds 2 --warmup 3 --threads 2
' 2>&1 | tee "$LOG"

# 6. Labels on aarch64 vs x86: per frame, from the label events (no smoothing, so one event per change).
python - "$BUNDLE" <<'EOF' 2>&1 | tee -a "$LOG"
import json, sys
from pathlib import Path
bundle = Path(sys.argv[1])
def labels(folder):
    events = [json.loads(l) for l in (folder / "events.jsonl").read_text().splitlines()]
    frames = json.loads((folder / "summary.json").read_text())["frames"]
    out, current = [], None
    changes = {e["frame"]: e["label"] for e in events if e["type"] == "label"}
    for i in range(frames):
        current = changes.get(i, current)
        out.append(current)
    return out
ok = True
for host in sorted((bundle / "host_out").iterdir()):
    pi = bundle / "pi_out" / host.name
    a, b = labels(host), labels(pi)
    same = sum(x == y for x, y in zip(a, b))
    need = len(a) if "int8" not in host.name else int(0.9 * len(a))  # INT8: rounding may flip a close call
    ok &= len(a) == len(b) and same >= need
    print(f"predictions {host.name}: aarch64 vs x86_64 labels equal on {same} of {len(a)} frames "
          f"({'match' if same >= need else 'MISMATCH'}{', INT8 tolerance 90%' if 'int8' in host.name else ''})")
print("RESULT:", "PASS" if ok else "FAIL")
sys.exit(0 if ok else 1)
EOF
