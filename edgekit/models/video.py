"""Clip models: networks that classify a short clip, a batch of shape (N, C, T, H, W), instead of one image.

- :func:`mobilenet3d`: the student. MobileNetV2's inverted residual blocks with 3D convolutions, the layout of
  Kopuklu et al., "Resource Efficient 3D Convolutional Neural Networks" (2019): a 3x3x3 stem that keeps time
  and halves space, pointwise 1x1x1 expansions and projections, 3x3x3 depthwise convolutions, and strides that
  halve time together with space in four of the seven stages. ``width_mult`` scales every layer's channels.
- :func:`i3d_mobilenet_v2`: the teacher. torchvision's MobileNetV2 "inflated" to 3D as I3D does (Carreira and
  Zisserman, 2017): every 3x3 convolution becomes 3x3x3 with stride 1 in time, every 1x1 becomes 1x1x1, and
  :meth:`InflatedMobileNetV2.load_2d_state_dict` fills it from 2D (ImageNet) weights by repeating each kernel
  over time and dividing by its length, so that a clip of one repeated image gives the 2D network's
  activations away from the clip's ends.

Both end in ``features`` (a Sequential of blocks) and ``classifier`` (a Sequential ending in a Linear), like
the image models, so the registry's head replacement and the trainer's freezing work on them unchanged.
torch is imported inside the functions (see docs/architecture.md).
"""
from __future__ import annotations

# (expansion t, output channels c, blocks n, stride (time, height, width) of the first block)
STUDENT_STAGES = (
    (1, 16, 1, (1, 1, 1)),
    (6, 24, 2, (2, 2, 2)),
    (6, 32, 3, (2, 2, 2)),
    (6, 64, 4, (2, 2, 2)),
    (6, 96, 3, (1, 1, 1)),
    (6, 160, 3, (2, 2, 2)),
    (6, 320, 1, (1, 1, 1)),
)
TEMPORAL_KERNEL = 3  # the inflated teacher's kernel length in time for every 3x3 convolution


def _divisible(value: float, divisor: int = 8) -> int:
    """Round channels to a multiple of 8 (as MobileNetV2 does), never more than 10% below ``value``."""
    rounded = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * value else rounded


def _conv_bn(cin: int, cout: int, kernel, stride=1, groups: int = 1, act: bool = True):
    import torch.nn as nn

    kernel = (kernel,) * 3 if isinstance(kernel, int) else tuple(kernel)
    layers = [nn.Conv3d(cin, cout, kernel, stride, tuple(k // 2 for k in kernel), groups=groups, bias=False),
              nn.BatchNorm3d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return nn.Sequential(*layers)


def _inverted_residual(cin: int, cout: int, stride: tuple[int, int, int], expansion: int):
    import torch.nn as nn

    class InvertedResidual3d(nn.Module):
        def __init__(self):
            super().__init__()
            hidden = cin * expansion
            layers = [] if expansion == 1 else [_conv_bn(cin, hidden, 1)]
            layers += [_conv_bn(hidden, hidden, 3, stride, groups=hidden), _conv_bn(hidden, cout, 1, act=False)]
            self.conv = nn.Sequential(*layers)
            self.residual = stride == (1, 1, 1) and cin == cout

        def forward(self, x):
            return x + self.conv(x) if self.residual else self.conv(x)

    return InvertedResidual3d()


class _ClipClassifier:
    """Mixed into both clip models: features -> global average over time and space -> classifier."""

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)).flatten(1))


def mobilenet3d(width_mult: float = 1.0, num_classes: int = 1000, dropout: float = 0.2):
    """The 3D MobileNetV2 student (see the module docstring); 2.4M parameters at width 1.0 with 1000 classes."""
    import torch.nn as nn

    if not 0.1 <= width_mult <= 4:
        raise ValueError(f"width_mult must be in [0.1, 4], got {width_mult}")

    class MobileNet3D(_ClipClassifier, nn.Module):
        def __init__(self):
            super().__init__()
            channels = _divisible(32 * width_mult)
            blocks = [_conv_bn(3, channels, 3, (1, 2, 2))]
            for expansion, out, repeats, stride in STUDENT_STAGES:
                out = _divisible(out * width_mult)
                for i in range(repeats):
                    blocks.append(_inverted_residual(channels, out, stride if i == 0 else (1, 1, 1), expansion))
                    channels = out
            last = _divisible(1280 * max(1.0, width_mult))
            blocks.append(_conv_bn(channels, last, 1))
            self.features = nn.Sequential(*blocks)
            self.pool = nn.AdaptiveAvgPool3d(1)
            self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
            for module in self.modules():
                if isinstance(module, nn.Conv3d):
                    nn.init.kaiming_normal_(module.weight, mode="fan_out")
                elif isinstance(module, nn.Linear):
                    nn.init.normal_(module.weight, 0, 0.01)
                    nn.init.zeros_(module.bias)

    return MobileNet3D()


def _inflate_modules(module) -> None:
    """Replace, in place, every Conv2d of ``module`` by its Conv3d (time kernel TEMPORAL_KERNEL for a 3x3, 1 for
    a 1x1; stride 1 in time) and every BatchNorm2d by a BatchNorm3d; weights are filled later."""
    import torch.nn as nn

    for name, child in module.named_children():
        if isinstance(child, nn.Conv2d):
            time = TEMPORAL_KERNEL if max(child.kernel_size) > 1 else 1
            setattr(module, name, nn.Conv3d(child.in_channels, child.out_channels, (time, *child.kernel_size),
                                            (1, *child.stride), (time // 2, *child.padding), groups=child.groups,
                                            bias=child.bias is not None))
        elif isinstance(child, nn.BatchNorm2d):
            setattr(module, name, nn.BatchNorm3d(child.num_features, child.eps, child.momentum))
        else:
            _inflate_modules(child)


def i3d_mobilenet_v2(num_classes: int = 1000, dropout: float = 0.2):
    """torchvision's MobileNetV2 inflated to 3D (the teacher); ImageNet weights through load_2d_state_dict."""
    import torch.nn as nn
    import torchvision

    class InflatedMobileNetV2(_ClipClassifier, nn.Module):
        def __init__(self):
            super().__init__()
            flat = torchvision.models.mobilenet_v2(num_classes=num_classes, dropout=dropout)
            _inflate_modules(flat.features)
            self.features = flat.features
            self.pool = nn.AdaptiveAvgPool3d(1)
            self.classifier = flat.classifier

        def load_2d_state_dict(self, state: dict) -> None:
            """Load a 2D MobileNetV2 state dict: each convolution kernel repeated over its time length and divided
            by it (I3D's inflation), everything else as it is."""
            own = self.state_dict()
            inflated = {}
            for key, value in state.items():
                target = own.get(key)
                if target is not None and target.dim() == 5 and value.dim() == 4:
                    time = target.shape[2]
                    value = value.unsqueeze(2).repeat(1, 1, time, 1, 1) / time
                inflated[key] = value
            self.load_state_dict(inflated)

    return InflatedMobileNetV2()
