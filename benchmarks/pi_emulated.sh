#!/usr/bin/env bash
# The Raspberry Pi path, emulated: a Debian bookworm arm64 root file system (what Raspberry Pi OS 64-bit is
# built on) under qemu-user, once as a Pi 4 (QEMU_CPU=cortex-a72: no dot product) and once as a Pi 5
# (cortex-a76: dot product). In each, the bundle's OWN install.sh and run.sh run, as a user would run them;
# the log shows the CPU the emulator really gives the processes (getauxval(AT_HWCAP) and the features it
# means), `edgekit doctor`'s INT8 advice, and labels on 200 real Fashion-MNIST test images compared with this
# x86 host for FP32 and INT8. Emulated timings say nothing about a real Pi and none are recorded.
#
# From a fresh clone, as root, nothing else first:
#   bash benchmarks/pi_emulated.sh [pi4|pi5|both]      logs: benchmarks/results/pi_emulated_{pi4,pi5}.log
# It installs the Debian packages it needs (tools/system-packages.sh --benchmarks), makes the README's venv
# when no edgekit is on PATH, trains a small checkpoint on real Fashion-MNIST when MODEL is not given, builds
# a minimal root file system once (cached in $ROOTFS) and one bundle per board (--target pi4 / pi5).
# Why not in CI: it needs root and kernel binfmt_misc, and emulated pip installs take minutes.
set -euo pipefail
WHICH=${1:-both}
ROOTFS=${ROOTFS:-/var/cache/edgekit/pi-bookworm-arm64}
MODEL=${MODEL:-runs/pi_emulated/model/model.pt}
DATA=${DATA:-/usr/share/datasets/fashion-mnist}
VIDEO=/usr/share/doc/opencv-doc/examples/data/Megamind.avi
started=$(date +%s)
[[ $(id -u) -eq 0 ]] || { echo "error: run as root (chroot, mounts, binfmt_misc)" >&2; exit 1; }
case $WHICH in pi4) boards=(pi4) ;; pi5) boards=(pi5) ;; both) boards=(pi4 pi5) ;;
  *) echo "error: expected pi4, pi5 or both, got $WHICH" >&2; exit 2 ;; esac

# 1. Host tools and data: qemu-user-static, binfmt-support, debootstrap, Fashion-MNIST, opencv-doc.
bash tools/system-packages.sh --benchmarks
[[ -f /proc/sys/fs/binfmt_misc/register ]] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
update-binfmts --enable qemu-aarch64 || { echo "error: update-binfmts could not enable qemu-aarch64" >&2; exit 1; }
[[ -f /proc/sys/fs/binfmt_misc/qemu-aarch64 ]] || { echo "error: qemu-aarch64 is not registered with binfmt_misc" >&2; exit 1; }

# 2. The host venv (the README's first command) and a small real checkpoint.
if ! command -v edgekit >/dev/null; then
  [[ -x .venv/bin/edgekit ]] || { python3 -m venv .venv && .venv/bin/pip install -q -e ".[all]"; }
  . .venv/bin/activate
fi
if [[ ! -f $MODEL ]]; then
  edgekit train --data "$DATA" --weights none --imgsz 32 --epochs 3 --limit 6000 --out "$(dirname "$MODEL")"
fi
# A one-logit model for `edgekit join` (two real Fashion-MNIST classes: it shows join works on the device, no
# accuracy is read from it).
BINARY=runs/pi_emulated/binary/model.onnx
if [[ ! -f $BINARY ]]; then
  python benchmarks/scripts/pi_binary_data.py "$DATA" runs/pi_emulated/binary_data
  edgekit train --data runs/pi_emulated/binary_data --weights none --imgsz 32 --epochs 2 --out "$(dirname "$BINARY")"
  edgekit export "${BINARY%.onnx}.pt" --format onnx
fi

# 3. A minimal root file system, cached (no libgl1: the headless OpenCV wheel does not need mesa).
if [[ ! -x $ROOTFS/usr/bin/python3 ]]; then
  mkdir -p "$(dirname "$ROOTFS")"
  debootstrap --arch=arm64 --variant=minbase --include=python3,python3-venv,ca-certificates \
    bookworm "$ROOTFS" http://deb.debian.org/debian
fi

cpuinfo() {  # an ARM /proc/cpuinfo for the board (onnxruntime and edgekit's doctor read it; qemu passes x86's)
  local part=$1 features=$2 model=$3
  for core in 0 1 2 3; do
    printf 'processor\t: %s\nBogoMIPS\t: 108.00\nFeatures\t: %s\nCPU implementer\t: 0x41\nCPU architecture: 8\nCPU variant\t: 0x4\nCPU part\t: %s\nCPU revision\t: 1\n\n' \
      $core "$features" $part
  done
  printf 'Hardware\t: BCM2835\nModel\t\t: %s (emulated: qemu-user)\n' "$model"
}

cleanup() {
  for m in proc/cpuinfo proc sys dev bundle; do umount "$ROOTFS/$m" 2>/dev/null || true; done
}
trap cleanup EXIT

for board in "${boards[@]}"; do
  if [[ $board == pi4 ]]; then
    qemu_cpu=cortex-a72; part=0xd08; features="fp asimd evtstrm crc32 cpuid"; model="Raspberry Pi 4 Model B"
  else
    qemu_cpu=cortex-a76; part=0xd0b; features="fp asimd evtstrm aes pmull sha1 sha2 crc32 atomics fphp asimdhp cpuid asimdrdm lrcpc dcpop asimddp"
    model="Raspberry Pi 5 Model B"
  fi
  bundle=runs/pi_emulated/bundle_$board
  log=benchmarks/results/pi_emulated_$board.log
  # 4. The bundle for this board (INT8 made for it), its inputs, and the host's labels on them.
  rm -rf "$bundle"
  edgekit export "$MODEL" --format onnx --int8 --bundle pi --target "$board" --out "$bundle" --data "$DATA"
  python benchmarks/scripts/pi_inputs.py "$VIDEO" "$DATA" "$bundle"
  cp "$BINARY" "$bundle/binary.onnx" && cp "$BINARY.edgekit.json" "$bundle/binary.onnx.edgekit.json"
  python - "$bundle" <<'EOF'  # the pipeline's own cost: a null model of the same spec on a 640x480 MJPEG clip
import sys
from pathlib import Path
sys.path.insert(0, "benchmarks/scripts")
from pipeline_overhead import make_clip, null_model
bundle = Path(sys.argv[1])
make_clip(bundle, loops=1)
null_model(str(bundle / "models" / "model.onnx"), bundle)
EOF
  for m in "$bundle"/models/*.onnx; do
    n=$(basename "$m" .onnx)
    edgekit run --model "$m" --source "$bundle/images" --smooth none --hold 1 --no-save-video \
      --out "$bundle/host_out/$n" >/dev/null 2>&1
  done
  # 5. Into the chroot. QEMU_CPU must reach every process (qemu reads it at each exec): env -i keeps it.
  mkdir -p "$ROOTFS/proc" "$ROOTFS/sys" "$ROOTFS/dev" "$ROOTFS/tmp" "$ROOTFS/bundle"
  cpuinfo $part "$features" "$model" > "$ROOTFS/tmp/cpuinfo"
  mount -t proc proc "$ROOTFS/proc"
  mount --bind "$ROOTFS/tmp/cpuinfo" "$ROOTFS/proc/cpuinfo"
  mount --bind /sys "$ROOTFS/sys"
  mount --bind /dev "$ROOTFS/dev"
  mount --bind "$bundle" "$ROOTFS/bundle"
  cp /etc/resolv.conf "$ROOTFS/etc/resolv.conf"
  cp "${SSL_CERT_FILE:-/etc/ssl/certs/ca-certificates.crt}" "$ROOTFS/etc/ssl/certs/host-ca-bundle.crt"
  {
    echo "# $(date -u) host: $(uname -m), $(lscpu | sed -n 's/^Model name: *//p'); command: bash benchmarks/pi_emulated.sh $WHICH"
    echo "# emulated with qemu-user ($(qemu-aarch64-static --version | head -1)), QEMU_CPU=$qemu_cpu: no timings are meaningful"
  } > "$log"
  chroot "$ROOTFS" /usr/bin/env -i QEMU_CPU=$qemu_cpu PATH=/usr/local/bin:/usr/bin:/bin HOME=/root LANG=C.UTF-8 \
    PIP_CERT=/etc/ssl/certs/host-ca-bundle.crt PIP_INDEX_URL="${PIP_INDEX_URL:-https://pypi.org/simple}" \
    PIP_DISABLE_PIP_VERSION_CHECK=1 VENV=/opt/edgekit-venv SERVE=127.0.0.1:0 \
    /bin/bash -euo pipefail -c '
cd /root
rm -rf /opt/edgekit-venv /opt/edgekit-sys  # every run measures a fresh install
echo "\$ uname -m: $(uname -m); $(python3 --version); QEMU_CPU=$QEMU_CPU"
python3 - <<EOF
import ctypes
libc = ctypes.CDLL(None)
libc.getauxval.restype = ctypes.c_ulong
hwcap, hwcap2 = libc.getauxval(16), libc.getauxval(26)  # AT_HWCAP, AT_HWCAP2
bits = {"asimd": 1 << 1, "asimddp (dot product)": 1 << 20, "sve": 1 << 22}
seen = [name for name, bit in bits.items() if hwcap & bit] + (["i8mm"] if hwcap2 & (1 << 13) else [])
print("getauxval(AT_HWCAP) = %#x, AT_HWCAP2 = %#x: %s" % (hwcap, hwcap2, ", ".join(seen)))
EOF
grep -m1 "^Model" /proc/cpuinfo
echo "\$ bash /bundle/install.sh"
start=$(date +%s)
bash /bundle/install.sh 2>&1 | grep -vE "^(Requirement already|Collecting|Downloading|Using cached|  )" | tail -25
echo "install.sh: exit 0 in $(( $(date +%s) - start )) s (emulated; aarch64 wheels from PyPI)"
. /opt/edgekit-venv/bin/activate
python -c "from importlib.metadata import version as v; print(\" \".join(n + \"==\" + v(n) for n in (\"edgekit\", \"onnxruntime\", \"numpy\", \"opencv-python-headless\", \"click\")))"
python -m pip --version >/dev/null 2>&1 && echo "pip: still in the venv" || echo "pip: left the venv (install.sh)"
python -c "import torch" 2>/dev/null && { echo "torch is importable: the device install pulled it"; exit 1; } || echo "torch: not installed (as intended)"
echo "\$ du -sm /opt/edgekit-venv: $(du -sm /opt/edgekit-venv | cut -f1) MB"
echo "  largest in site-packages (MB): $(du -sm /opt/edgekit-venv/lib/python3*/site-packages/* | sort -rn | head -7 | sed "s|/opt/edgekit-venv/lib/python3[.0-9]*/site-packages/||" | tr "\t\n" " ;")"
mkdir -p /root/user && cd /root/user
for m in /bundle/models/*.onnx; do
  n=$(basename "$m" .onnx)
  if [ "$n" = model_int8 ]; then
    echo "\$ OUT=pi_out/$n bash /bundle/run.sh /bundle/images --smooth none --hold 1   (the bundle run.sh, 200 images)"
    OUT=pi_out/$n bash /bundle/run.sh /bundle/images --smooth none --hold 1 2>&1 | tail -2
  else
    echo "\$ edgekit run --model $m --source /bundle/images --smooth none --hold 1 --no-save-video"
    edgekit run --model "$m" --source /bundle/images --smooth none --hold 1 --no-save-video --out "pi_out/$n" 2>&1 | tail -2
  fi
done
rm -rf /bundle/pi_out && cp -r pi_out /bundle/pi_out
for decode in --reduced-decode --full-decode; do
  echo "\$ edgekit run --model /bundle/null.onnx --source /bundle/megamind_640x480.avi --no-save-video --threads 1 $decode   (the pipeline without a model; emulated CPU time: qemu, not a Pi)"
  edgekit run --model /bundle/null.onnx --source /bundle/megamind_640x480.avi --no-save-video --threads 1 $decode \
    --out null_out 2>&1 | grep -E "^classify"
done
echo "\$ bash /bundle/run.sh ../../bundle/clip.avi   (a relative path, 48 frames of Megamind.avi)"
OUT=clip_out bash /bundle/run.sh ../../bundle/clip.avi 2>&1 | tail -3
echo "\$ edgekit run --model /bundle/models/model_int8.onnx --source /bundle/clip.avi --faces haar --no-save-video"
edgekit run --model /bundle/models/model_int8.onnx --source /bundle/clip.avi --faces haar --no-save-video \
  --out faces_out 2>&1 | grep -E "^source"
python -c "import json; s = json.load(open(\"faces_out/summary.json\")); print(\"faces: %d frames, %d inferences on a Haar face region\" % (s[\"frames\"], s[\"inferences\"])); assert s[\"inferences\"] > 0"
echo "\$ edgekit bench run /bundle/models/model.onnx /bundle/models/model_int8.onnx --warmup 2 --min-runs 20 --min-seconds 0.5   (it runs; emulated times mean nothing)"
edgekit bench run /bundle/models/model.onnx /bundle/models/model_int8.onnx --warmup 2 --min-runs 20 --min-seconds 0.5 \
  2>&1 | tail -5
port=$(python -c "import socket; s = socket.socket(); s.bind((\"127.0.0.1\", 0)); print(s.getsockname()[1])")
echo "\$ edgekit serve --port $port --http off --token ... &; edgekit join --server 127.0.0.1:$port --name pi --model /bundle/binary.onnx --source /bundle/clip.avi --loop --duration 8"
edgekit serve --port "$port" --http off --token t0k --duration 120 > serve.log 2>&1 &
server=$!
for _ in $(seq 90); do grep -q "meeting on" serve.log && break; sleep 1; done
EDGEKIT_TOKEN=t0k edgekit join --server "127.0.0.1:$port" --name pi --model /bundle/binary.onnx --source /bundle/clip.avi \
  --loop --duration 8 --out join_out 2>&1 | tail -1
kill "$server"; wait "$server" || echo "edgekit serve stopped (exit $?)"
python -c "import json; s = json.load(open(\"join_out/summary.json\")); print(\"join: connects %d, tiles sent %d, grids received %d\" % (s[\"connects\"], s[\"sent\"], s[\"grids_received\"])); assert s[\"connects\"] == 1 and s[\"sent\"] > 0 and s[\"grids_received\"] > 0"
echo "\$ du -sm /opt/edgekit-venv after the runs (with the .pyc files of what they imported): $(du -sm /opt/edgekit-venv | cut -f1) MB"
if [ "$QEMU_CPU" = cortex-a72 ]; then  # the smaller install: numpy and OpenCV from Debian
  echo "\$ SYSTEM_PACKAGES=1 VENV=/opt/edgekit-sys bash /bundle/install.sh   (numpy, OpenCV from apt)"
  # a root file system kept from an earlier run has them already: remove them so the count below is real
  apt-get purge -y -q python3-numpy python3-opencv >/dev/null && apt-get autoremove --purge -y -q >/dev/null
  before=$(dpkg-query -W -f="\${Installed-Size}\n" | awk "{s+=\$1} END {print s}")
  SYSTEM_PACKAGES=1 VENV=/opt/edgekit-sys bash /bundle/install.sh 2>&1 | grep -E "^(OK|WARN|INFO|FAIL) "
  after=$(dpkg-query -W -f="\${Installed-Size}\n" | awk "{s+=\$1} END {print s}")
  echo "system-packages mode: venv $(du -sm /opt/edgekit-sys | cut -f1) MB, plus $(( (after - before) / 1024 )) MB of Debian packages (python3-numpy, python3-opencv and what they pull)"
  VENV=/opt/edgekit-sys OUT=sys_out/model_int8 bash /bundle/run.sh /bundle/images --smooth none --hold 1 2>&1 | tail -1
  rm -rf /bundle/sys_out && cp -r sys_out /bundle/sys_out
fi
' 2>&1 | tee -a "$log"
  cleanup
  # 6. Labels on aarch64 vs x86: per image, from the label events (no smoothing: one event per change).
  result=PASS
  python benchmarks/scripts/compare_labels.py "$bundle/host_out" "$bundle/pi_out" "aarch64 vs x86_64" 2>&1 \
    | tee -a "$log" || result=FAIL
  python benchmarks/scripts/compare_labels.py "$bundle/host_out" "$bundle/sys_out" \
    "aarch64 (system-packages install) vs x86_64" --optional 2>&1 | tee -a "$log" || result=FAIL
  echo "RESULT: $result" | tee -a "$log"
  [[ $result == PASS ]]
done
echo "pi_emulated.sh: ${boards[*]} in $(( $(date +%s) - started )) s"
