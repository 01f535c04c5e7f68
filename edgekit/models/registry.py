"""Model registry: torchvision classifiers and edgekit's own small CNN, each with a replaceable head.

Add an architecture by adding a :class:`Arch` entry to ``ARCHS``. Each entry knows how to build the
backbone (a torchvision function, or ``edgekit:<name>`` for a builder in this module), how many image planes
it takes, and which ImageNet weights torchvision offers for it (none for edgekit's own).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from edgekit.core.errors import BadInputError, EdgekitError, UnknownNameError
from edgekit.models.checkpoint import LOAD_ERRORS
from edgekit.models.video import i3d_mobilenet_v2, mobilenet3d  # noqa: F401 (builders named in ARCHS)

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Arch:
    builder: str  # torchvision.models function name, or "edgekit:<name>" for a builder in this module
    weights: str  # torchvision weights enum name (its DEFAULT member is used); "" = no pretrained weights
    channels: int = 3  # image planes the network takes (1: grayscale, normalised with mean 0.5, std 0.5)
    task: str = "image"  # "clip": takes (N, C, T, H, W) clips (edgekit/models/video.py)


ARCHS = {
    "mobilenet_v2": Arch("mobilenet_v2", "MobileNet_V2_Weights"),
    "mobilenet_v3_large": Arch("mobilenet_v3_large", "MobileNet_V3_Large_Weights"),
    "mobilenet_v3_small": Arch("mobilenet_v3_small", "MobileNet_V3_Small_Weights"),
    "small_cnn": Arch("edgekit:small_cnn", "", channels=1),
    # clip models (edgekit/models/video.py): the 3D MobileNetV2 student at two widths, and the I3D-style teacher
    # inflated from torchvision's (ImageNet) MobileNetV2
    "mobilenet3d": Arch("edgekit:mobilenet3d", "", task="clip"),
    "mobilenet3d_x0_5": Arch("edgekit:mobilenet3d_x0_5", "", task="clip"),
    "i3d_mobilenet_v2": Arch("edgekit:i3d_mobilenet_v2", "MobileNet_V2_Weights", task="clip"),
}


def mobilenet3d_x0_5():
    return mobilenet3d(width_mult=0.5)


def small_cnn():
    """A LeNet-style CNN for small grey images such as 28x28 digits or Fashion-MNIST: two 3x3 conv-ReLU-maxpool
    stages (32 and 64 channels), then a 7x7 adaptive pool, flatten, linear 3136 -> 128, ReLU, dropout and the
    output layer. About 420k parameters, 95% of them in the first linear layer: the kind of network where
    dynamic INT8 (Linear weights only) shrinks the file most."""
    import torch.nn as nn

    class SmallCNN(nn.Module):
        def __init__(self):
            super().__init__()
            self.features = nn.Sequential(
                nn.Sequential(nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
                nn.Sequential(nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(inplace=True), nn.MaxPool2d(2)),
                nn.AdaptiveAvgPool2d(7))
            self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(inplace=True),
                                            nn.Dropout(0.2), nn.Linear(128, 1000))

        def forward(self, x):
            return self.classifier(self.features(x))

    return SmallCNN()


@dataclass(frozen=True)
class HeadConfig:
    """``hidden=0``: dropout -> linear. ``hidden=64``: linear(features, 64) -> ReLU -> dropout -> linear."""

    dropout: float = 0.2
    hidden: int = 0


def get_arch(name: str) -> Arch:
    if name not in ARCHS:
        raise UnknownNameError("model", name, ARCHS)
    return ARCHS[name]


def build_model(name: str, num_outputs: int, head: HeadConfig = HeadConfig(), weights: str = "none"):
    """Build ``name`` with a fresh head of ``num_outputs`` logits.

    ``weights``: ``"none"`` (random init), ``"imagenet"`` (torchvision's weights, from its cache or the
    network) or the path of a torchvision ``.pth`` state dict for the full ImageNet model.
    """
    import torch.nn as nn
    import torchvision.models as tvm

    arch = get_arch(name)
    if arch.builder.startswith("edgekit:"):
        if weights != "none" and not arch.weights:
            raise BadInputError(f"{name} has no pretrained weights; train it with --weights none")
        model = globals()[arch.builder.split(":", 1)[1]]()
    else:
        model = getattr(tvm, arch.builder)()
    if weights != "none":
        state = imagenet_state_dict(name, arch, weights)
        if hasattr(model, "load_2d_state_dict"):  # a clip model inflated from the 2D network's weights
            model.load_2d_state_dict(state)
        else:
            model.load_state_dict(state)
    # Every registered model ends in ``classifier``, a Sequential whose last layer is the ImageNet-sized
    # linear; its dropout (if any) sits right before it. MobileNetV3 keeps its wide hidden layer.
    width = model.classifier[-1].in_features
    layers: list = []
    if head.hidden:
        layers += [nn.Linear(width, head.hidden), nn.ReLU(inplace=True)]
    layers += [nn.Dropout(head.dropout), nn.Linear(head.hidden or width, num_outputs)]
    kept = [m for m in list(model.classifier)[:-1] if not isinstance(m, nn.Dropout)]
    model.classifier = nn.Sequential(*kept, *layers)
    return model


def imagenet_state_dict(name: str, arch: Arch, weights: str) -> dict:
    import torch
    import torchvision.models as tvm

    if weights != "imagenet":
        path = Path(weights)
        if not path.is_file():
            raise BadInputError(f"weights file not found: {path}")
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except LOAD_ERRORS as exc:
            raise BadInputError(f"cannot read weights file {path}: {exc}") from exc
    weights_enum = getattr(tvm, arch.weights)
    cached = cached_imagenet_weights(weights_enum)
    if cached is not None:
        member, path = cached
        log.info("ImageNet weights: %s (%s) from %s", member.name, path.name, path.parent)
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except LOAD_ERRORS as exc:
            raise BadInputError(f"cannot read the cached weights {path}: {exc}; delete it and retry") from exc
    default = weights_enum.DEFAULT
    cache = Path(torch.hub.get_dir()) / "checkpoints"
    advice = (f"Put one of {', '.join(Path(w.url).name for w in weights_enum)} into {cache}, pass --weights FILE, "
              f"or train from scratch with --weights none.")
    if not download_possible(default.url):
        raise EdgekitError(f"cannot load ImageNet weights for {name}: none in the torchvision cache and "
                           f"{urlparse(default.url).hostname} is not reachable (offline?). {advice}")
    try:
        return default.get_state_dict(progress=True)
    except (OSError, RuntimeError) as exc:  # URLError is an OSError
        raise EdgekitError(f"cannot load ImageNet weights for {name}: the download failed "
                           f"({type(exc).__name__}). {advice}") from exc


def cached_imagenet_weights(weights_enum) -> tuple | None:
    """(weights member, file) of the first of torchvision's files for this architecture found in its cache,
    the DEFAULT one first: torchvision itself looks only for DEFAULT's file and otherwise downloads."""
    import torch

    cache = Path(torch.hub.get_dir()) / "checkpoints"
    members = [weights_enum.DEFAULT] + [w for w in weights_enum if w is not weights_enum.DEFAULT]
    for member in members:
        path = cache / Path(member.url).name
        if path.is_file():
            return member, path
    return None


def download_possible(url: str, timeout: float = 2.0) -> bool:
    """Whether the weights' host answers within ``timeout`` (no 20 s hang offline). EDGEKIT_OFFLINE=1 says no."""
    import os
    import socket

    if os.environ.get("EDGEKIT_OFFLINE", "") not in ("", "0"):
        return False
    try:
        with socket.create_connection((urlparse(url).hostname, 443), timeout=timeout):
            return True
    except OSError:
        return False


def feature_blocks(model) -> list:
    """The backbone's blocks in order (for freezing all but the last N)."""
    return list(model.features)
