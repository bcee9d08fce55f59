"""VGG with BatchNorm (VGG-11/16, ImageNet or small-input classifier) and a small VGG for 8x8 / 28x28 images."""
from __future__ import annotations

from typing import Sequence, Union

from torch import nn

from . import register_model
from .resnet import init_weights

CONFIGS = {  # conv widths, "M" = 2x2 max-pool (Simonyan & Zisserman 2015, table 1)
    "vgg11": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],
}


def make_features(cfg: Sequence[Union[int, str]], in_channels: int, width_mult: float = 1.0) -> tuple[nn.Sequential, int]:
    """conv3x3-BN-ReLU for each width, MaxPool2d(2) for each "M"; returns the stack and its output channels."""
    layers: list[nn.Module] = []
    cin = in_channels
    for v in cfg:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        cout = max(1, int(round(int(v) * width_mult)))
        layers += [nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()]
        cin = cout
    return nn.Sequential(*layers), cin


class VGG(nn.Module):
    """features -> AdaptiveAvgPool2d(pool) -> Flatten -> classifier."""

    def __init__(self, features: nn.Sequential, pool: int, classifier: nn.Sequential):
        super().__init__()
        self.features = features
        self.pool = nn.AdaptiveAvgPool2d(pool)
        self.flatten = nn.Flatten()
        self.classifier = classifier

    def forward(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


def vgg_bn(cfg_name: str, in_channels: int, num_classes: int, width_mult: float, small_input: bool, dropout: float) -> VGG:
    """ImageNet head (7x7 pool, 4096-4096 MLP) or, with ``small_input``, the CIFAR head (global pool, one Linear)."""
    features, c = make_features(CONFIGS[cfg_name], in_channels, width_mult)
    if small_input:
        return init_weights(VGG(features, 1, nn.Sequential(nn.Dropout(dropout), nn.Linear(c, num_classes))))
    hidden = max(1, int(round(4096 * width_mult)))
    head = nn.Sequential(
        nn.Linear(c * 49, hidden), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(hidden, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes),
    )
    return init_weights(VGG(features, 7, head))


@register_model("vgg11_bn")
def vgg11_bn(in_channels: int = 3, num_classes: int = 1000, width_mult: float = 1.0, small_input: bool = False, dropout: float = 0.5) -> nn.Module:
    """VGG-11 with BatchNorm; needs inputs of at least 32x32 (five 2x2 max-pools)."""
    return vgg_bn("vgg11", in_channels, num_classes, width_mult, small_input, dropout)


@register_model("vgg16_bn")
def vgg16_bn(in_channels: int = 3, num_classes: int = 1000, width_mult: float = 1.0, small_input: bool = False, dropout: float = 0.5) -> nn.Module:
    return vgg_bn("vgg16", in_channels, num_classes, width_mult, small_input, dropout)


@register_model("vgg_small")
def vgg_small(in_channels: int = 1, num_classes: int = 10, width: int = 32, hidden: int = 128, dropout: float = 0.1) -> nn.Module:
    """[w, w, M, 2w, 2w, M, 4w] conv-BN-ReLU -> 2x2 avg pool -> flatten -> Linear(hidden) -> Linear: for 8x8 and 28x28 inputs."""
    features, c = make_features([width, width, "M", 2 * width, 2 * width, "M", 4 * width], in_channels)
    head = nn.Sequential(nn.Linear(c * 4, hidden), nn.ReLU(), nn.Dropout(dropout), nn.Linear(hidden, num_classes))
    return init_weights(VGG(features, 2, head))
