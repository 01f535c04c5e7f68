"""Write an untrained (random-init) edgekit checkpoint: for latency benchmarks only, never for accuracy.

The latency of a CNN does not depend on its weights, so the speed targets (MobileNetV2 at 160x160,
MobileNetV3-Large at 224x224) are measured on untrained networks with Fashion-MNIST's 10 labels; the data
set is recorded so that `edgekit export --int8` and `edgekit quantize` find real calibration images.
Usage: python benchmarks/scripts/random_init.py ARCH SIZE DATA OUT.pt
"""
from __future__ import annotations

import sys
from dataclasses import asdict


def main() -> None:
    from edgekit.models.checkpoint import Checkpoint, save_checkpoint
    from edgekit.models.registry import HeadConfig, build_model
    from edgekit.training.trainer import TrainConfig, load_data, make_spec

    arch, size, data, out = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
    cfg = TrainConfig(data=data, model=arch, weights="none", input_size=size)
    spec = make_spec(cfg, load_data(cfg))
    model = build_model(arch, spec.num_outputs, HeadConfig(), "none").eval()
    info = {"arch": arch, "head": asdict(HeadConfig())}
    save_checkpoint(out, Checkpoint(spec, info, model.state_dict(), [], {"config": asdict(cfg), "untrained": True}))
    print(f"random-init {arch} at {size}x{size} -> {out}")


if __name__ == "__main__":
    main()
