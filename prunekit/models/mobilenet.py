"""MobileNetV2 (Sandler et al. 2018): inverted residuals with depthwise 3x3 convs, ``width_mult``, small-input variant."""
from __future__ import annotations

from torch import nn

from . import register_model
from .resnet import init_weights

# expansion t, output channels c, repeats n, first stride s (paper table 2)
SETTINGS = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


def make_divisible(v: float, divisor: int = 8) -> int:
    """Round to the nearest multiple of ``divisor`` without dropping more than 10% (the reference implementation's rule)."""
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def conv_bn_relu6(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout), nn.ReLU6())


class InvertedResidual(nn.Module):
    """1x1 expand (skipped when t == 1) -> 3x3 depthwise -> 1x1 linear projection; ``x + block(x)`` when shapes match."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = int(round(cin * expand))
        layers = [conv_bn_relu6(cin, hidden, 1)] if expand != 1 else []
        layers += [conv_bn_relu6(hidden, hidden, 3, stride, groups=hidden), nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout  # a build-time constant, so fx traces one branch

    def forward(self, x):
        if self.use_residual:
            return x + self.block(x)
        return self.block(x)


class MobileNetV2(nn.Module):
    def __init__(self, in_channels: int = 3, num_classes: int = 1000, width_mult: float = 1.0, small_input: bool = False, dropout: float = 0.2):
        super().__init__()
        cin = make_divisible(32 * width_mult)
        last = make_divisible(1280 * max(1.0, width_mult))
        layers = [conv_bn_relu6(in_channels, cin, 3, stride=1 if small_input else 2)]
        for i, (t, c, n, s) in enumerate(SETTINGS):
            cout = make_divisible(c * width_mult)
            if small_input and i == 1:
                s = 1  # CIFAR variant: keep resolution in the second stage too
            for j in range(n):
                layers.append(InvertedResidual(cin, cout, s if j == 0 else 1, t))
                cin = cout
        layers.append(conv_bn_relu6(cin, last, 1))
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(last, num_classes))
        init_weights(self)

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


@register_model("mobilenetv2")
def mobilenetv2(in_channels: int = 3, num_classes: int = 1000, width_mult: float = 1.0, small_input: bool = False, dropout: float = 0.2) -> nn.Module:
    """MobileNetV2 (3.5M parameters at width 1.0); ``small_input`` drops two stride-2s for 32x32 and smaller images."""
    return MobileNetV2(in_channels, num_classes, width_mult, small_input, dropout)
