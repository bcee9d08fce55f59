"""Zoo convnets: VGG, ResNet (basic / bottleneck / pre-activation), ResNeXt, MobileNetV2, GroupNorm, PReLU+InstanceNorm, 1-D CNN."""
from __future__ import annotations

from torch import nn

from . import seeded_randn, zoo_model


def image():
    return seeded_randn(2, 3, 16, 16)


def conv_bn(cin: int, cout: int, k: int = 3, stride: int = 1, groups: int = 1, relu: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def classifier(c: int, num_classes: int = 5) -> nn.Sequential:
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, num_classes))


@zoo_model("vgg", image, tags=("plain", "flatten"))
def vgg() -> nn.Module:
    """conv-BN-ReLU stacks with max-pooling, then flatten (spatial 4x4) into a two-layer classifier."""
    return nn.Sequential(
        conv_bn(3, 8), conv_bn(8, 8), nn.MaxPool2d(2),
        conv_bn(8, 16), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(16 * 4 * 4, 24), nn.ReLU(), nn.Dropout(0.1), nn.Linear(24, 5),
    )


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = conv_bn(cin, cout, stride=stride)
        self.conv2 = conv_bn(cout, cout, relu=False)
        self.shortcut = conv_bn(cin, cout, k=1, stride=stride, relu=False) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(self.conv2(self.conv1(x)) + self.shortcut(x))


@zoo_model("resnet_basic", image, tags=("residual",))
def resnet_basic() -> nn.Module:
    """Stem, an identity basic block and a strided one with a 1x1 projection shortcut."""
    return nn.Sequential(conv_bn(3, 8), BasicBlock(8, 8), BasicBlock(8, 16, stride=2), classifier(16))


class Bottleneck(nn.Module):
    def __init__(self, cin: int, mid: int, cout: int, stride: int = 1, groups: int = 1):
        super().__init__()
        self.reduce = conv_bn(cin, mid, k=1)
        self.conv = conv_bn(mid, mid, stride=stride, groups=groups)
        self.expand = conv_bn(mid, cout, k=1, relu=False)
        self.shortcut = conv_bn(cin, cout, k=1, stride=stride, relu=False) if stride != 1 or cin != cout else nn.Identity()
        self.relu = nn.ReLU()

    def forward(self, x):
        identity = self.shortcut(x)
        return self.relu(self.expand(self.conv(self.reduce(x))) + identity)


@zoo_model("resnet_bottleneck", image, tags=("residual",))
def resnet_bottleneck() -> nn.Module:
    """1x1-3x3-1x1 bottlenecks (expansion 4): an identity one, then a strided projection one."""
    return nn.Sequential(conv_bn(3, 16), Bottleneck(16, 4, 16), Bottleneck(16, 8, 32, stride=2), classifier(32))


@zoo_model("resnext", image, tags=("residual", "grouped"))
def resnext() -> nn.Module:
    """ResNeXt blocks: a grouped (cardinality 4) 3x3 conv inside each bottleneck."""
    return nn.Sequential(conv_bn(3, 16), Bottleneck(16, 16, 16, groups=4), Bottleneck(16, 16, 24, stride=2, groups=4), classifier(24))


class PreActBlock(nn.Module):
    """BN-ReLU-conv-BN-ReLU-conv; the shortcut taps the pre-activated input when it projects."""

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.bn1, self.relu1 = nn.BatchNorm2d(cin), nn.ReLU()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn2, self.relu2 = nn.BatchNorm2d(cout), nn.ReLU()
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.project = nn.Conv2d(cin, cout, 1, stride, bias=False) if stride != 1 or cin != cout else None

    def forward(self, x):
        out = self.relu1(self.bn1(x))
        shortcut = self.project(out) if self.project is not None else x
        out = self.conv2(self.relu2(self.bn2(self.conv1(out))))
        return out + shortcut


@zoo_model("preact_resnet", image, tags=("residual",))
def preact_resnet() -> nn.Module:
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), PreActBlock(8, 8), PreActBlock(8, 16, stride=2),
        nn.BatchNorm2d(16), nn.ReLU(), classifier(16),
    )


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        layers = [conv_bn(cin, hidden, k=1)] if expand != 1 else []
        layers += [conv_bn(hidden, hidden, stride=stride, groups=hidden), conv_bn(hidden, cout, k=1, relu=False)]
        self.block = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout  # fixed at build time: no data-dependent branch

    def forward(self, x):
        if self.use_residual:
            return x + self.block(x)
        return self.block(x)


@zoo_model("mobilenetv2", image, tags=("residual", "depthwise"))
def mobilenetv2() -> nn.Module:
    """Inverted residuals with depthwise 3x3 convs (expansion 1 and 4), a residual one, then a 1x1 head."""
    return nn.Sequential(
        conv_bn(3, 8, stride=2), InvertedResidual(8, 8, 1, expand=1), InvertedResidual(8, 12, 2, expand=4),
        InvertedResidual(12, 12, 1, expand=4), conv_bn(12, 32, k=1), nn.Dropout(0.1), classifier(32),
    )


@zoo_model("groupnorm_cnn", image, tags=("plain", "groupnorm"))
def groupnorm_cnn() -> nn.Module:
    """GroupNorm (4 groups of 2-4 channels) instead of BatchNorm: pruning must keep channels divisible by groups."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(4, 8), nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.GroupNorm(4, 16), nn.ReLU(), classifier(16),
    )


@zoo_model("prelu_instancenorm_cnn", image, tags=("plain", "prelu"))
def prelu_instancenorm_cnn() -> nn.Module:
    """Per-channel PReLU and affine InstanceNorm: both carry per-channel parameters to slice."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1), nn.InstanceNorm2d(8, affine=True), nn.PReLU(8),
        nn.Conv2d(8, 12, 3, stride=2, padding=1), nn.BatchNorm2d(12), nn.PReLU(12), classifier(12),
    )


def signal():
    return seeded_randn(2, 4, 32)


@zoo_model("conv1d", signal, tags=("plain", "1d"))
def conv1d() -> nn.Module:
    """Conv1d-BN1d-ReLU stack on (N, 4, 32) signals, global pooling and a Linear head."""
    return nn.Sequential(
        nn.Conv1d(4, 8, 3, padding=1, bias=False), nn.BatchNorm1d(8), nn.ReLU(),
        nn.Conv1d(8, 16, 3, stride=2, padding=1, bias=False), nn.BatchNorm1d(16), nn.ReLU(),
        nn.AdaptiveAvgPool1d(1), nn.Flatten(), nn.Linear(16, 3),
    )
