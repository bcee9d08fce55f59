"""ResNets: CIFAR-style ResNet-20/32/56 (3 stages 16/32/64) and ImageNet-style ResNet-18/34/50 (basic / bottleneck)."""
from __future__ import annotations

from typing import Sequence, Type, Union

from torch import nn

from . import register_model


def conv_bn(cin: int, cout: int, k: int, stride: int = 1, groups: int = 1) -> list[nn.Module]:
    return [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]


def init_weights(model: nn.Module, zero_init_residual: bool = False) -> nn.Module:
    """Kaiming-normal convs, unit BatchNorm, small-normal Linears (the torchvision recipe)."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, 0.01)
            nn.init.zeros_(m.bias)
    if zero_init_residual:
        for m in model.modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                nn.init.zeros_(m.residual[-1].weight)  # last BN of the residual branch
    return model


def projection(cin: int, cout: int, stride: int) -> nn.Module:
    """1x1 conv + BN shortcut when the shape changes, identity otherwise (ResNet 'option B')."""
    if stride == 1 and cin == cout:
        return nn.Identity()
    return nn.Sequential(*conv_bn(cin, cout, 1, stride))


class BasicBlock(nn.Module):
    """3x3 conv-BN-ReLU -> 3x3 conv-BN, plus the shortcut, then ReLU."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.residual = nn.Sequential(*conv_bn(cin, planes, 3, stride), nn.ReLU(), *conv_bn(planes, planes, 3))
        self.shortcut = projection(cin, planes, stride)
        self.relu = nn.ReLU()

    def forward(self, x):
        identity = self.shortcut(x)
        return self.relu(self.residual(x) + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 (carries the stride, 'ResNet v1.5') -> 1x1 expand x4, plus the shortcut, then ReLU."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        out = planes * self.expansion
        self.residual = nn.Sequential(
            *conv_bn(cin, planes, 1), nn.ReLU(), *conv_bn(planes, planes, 3, stride), nn.ReLU(), *conv_bn(planes, out, 1)
        )
        self.shortcut = projection(cin, out, stride)
        self.relu = nn.ReLU()

    def forward(self, x):
        identity = self.shortcut(x)
        return self.relu(self.residual(x) + identity)


Block = Type[Union[BasicBlock, Bottleneck]]


class ResNet(nn.Module):
    """Stem -> stages of residual blocks (first block of each later stage strides by 2) -> avgpool -> Linear."""

    def __init__(self, block: Block, depths: Sequence[int], widths: Sequence[int], stem: nn.Module, stem_out: int, num_classes: int):
        super().__init__()
        self.stem = stem
        stages, cin = [], stem_out
        for i, (n, w) in enumerate(zip(depths, widths)):
            blocks = []
            for j in range(n):
                blocks.append(block(cin, w, stride=2 if (i > 0 and j == 0) else 1))
                cin = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(self.flatten(self.pool(self.stages(self.stem(x)))))


def cifar_resnet(depth: int, in_channels: int, num_classes: int, width: int) -> ResNet:
    """ResNet-(6n+2) of He et al. 2016 for 32x32 (also 28x28 / 8x8) inputs: stages width, 2*width, 4*width."""
    n = (depth - 2) // 6
    stem = nn.Sequential(*conv_bn(in_channels, width, 3), nn.ReLU())
    model = ResNet(BasicBlock, [n] * 3, [width, 2 * width, 4 * width], stem, width, num_classes)
    return init_weights(model)


def imagenet_resnet(block: Block, depths, in_channels: int, num_classes: int, width: int, small_input: bool) -> ResNet:
    """ImageNet ResNet: 7x7/2 conv + 3x3/2 maxpool stem, or a 3x3/1 stem without pooling when ``small_input``."""
    if small_input:
        stem = nn.Sequential(*conv_bn(in_channels, width, 3), nn.ReLU())
    else:
        stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 7, 2, 3, bias=False), nn.BatchNorm2d(width), nn.ReLU(), nn.MaxPool2d(3, 2, 1)
        )
    widths = [width, 2 * width, 4 * width, 8 * width]
    return init_weights(ResNet(block, depths, widths, stem, width, num_classes))


@register_model("resnet20")
def resnet20(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> nn.Module:
    return cifar_resnet(20, in_channels, num_classes, width)


@register_model("resnet32")
def resnet32(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> nn.Module:
    return cifar_resnet(32, in_channels, num_classes, width)


@register_model("resnet56")
def resnet56(in_channels: int = 3, num_classes: int = 10, width: int = 16) -> nn.Module:
    return cifar_resnet(56, in_channels, num_classes, width)


@register_model("resnet18")
def resnet18(in_channels: int = 3, num_classes: int = 1000, width: int = 64, small_input: bool = False) -> nn.Module:
    return imagenet_resnet(BasicBlock, [2, 2, 2, 2], in_channels, num_classes, width, small_input)


@register_model("resnet34")
def resnet34(in_channels: int = 3, num_classes: int = 1000, width: int = 64, small_input: bool = False) -> nn.Module:
    return imagenet_resnet(BasicBlock, [3, 4, 6, 3], in_channels, num_classes, width, small_input)


@register_model("resnet50")
def resnet50(in_channels: int = 3, num_classes: int = 1000, width: int = 64, small_input: bool = False) -> nn.Module:
    """ResNet-50 (bottleneck, 25.6M parameters at the defaults)."""
    return imagenet_resnet(Bottleneck, [3, 4, 6, 3], in_channels, num_classes, width, small_input)
