#!/usr/bin/env bash
# Debian packages edgekit's tests and benchmarks use, installed only when missing:
#   chromium     the headless browser the MJPEG-stream and dashboard tests drive
#   opencv-doc   /usr/share/doc/opencv-doc/examples/data/Megamind.avi, the real face video of the app tests
#   openssl      makes the self-signed certificate of the meeting TLS test
#   mosquitto    the MQTT broker the fleet telemetry tests start on a loopback port
# With --benchmarks also:
#   dataset-fashion-mnist   the real Fashion-MNIST the accuracy benchmarks train on
#   qemu-user-static, binfmt-support, debootstrap   the emulated aarch64 (Raspberry Pi) run, benchmarks/pi_emulated.sh
# Runs apt-get as root, or through sudo when there is one. Other distributions: install the equivalents.
set -euo pipefail
packages=(chromium opencv-doc openssl mosquitto)
[[ "${1:-}" == "--benchmarks" ]] && packages+=(dataset-fashion-mnist qemu-user-static binfmt-support debootstrap)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [[ ${#missing[@]} -eq 0 ]]; then
  echo "system packages present: ${packages[*]}"
  exit 0
fi
if ! command -v apt-get >/dev/null; then
  echo "error: needs ${missing[*]} (Debian/Ubuntu package names) and apt-get is not here; install them by hand" >&2
  exit 1
fi
sudo=""
if [[ $(id -u) -ne 0 ]]; then
  command -v sudo >/dev/null || { echo "error: installing ${missing[*]} needs root or sudo" >&2; exit 1; }
  sudo="sudo"
fi
echo "installing ${missing[*]}"
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q "${missing[@]}"
