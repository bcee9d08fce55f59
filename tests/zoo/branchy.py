"""Zoo models with branches: squeeze-excitation gate, DenseNet / Inception concats, U-Net, YOLO-like heads, split/chunk, two inputs."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from . import seeded_randn, zoo_model
from .convnets import classifier, conv_bn, image


class SqueezeExcite(nn.Module):
    """x * sigmoid(fc2(relu(fc1(avgpool(x))))) with 1x1 convs: the gate's channels are coupled to x's."""

    def __init__(self, c: int, reduced: int):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1, self.relu = nn.Conv2d(c, reduced, 1), nn.ReLU()
        self.fc2, self.gate = nn.Conv2d(reduced, c, 1), nn.Sigmoid()

    def forward(self, x):
        return x * self.gate(self.fc2(self.relu(self.fc1(self.pool(x)))))


class SEBlock(nn.Module):
    def __init__(self, c: int):
        super().__init__()
        self.body = nn.Sequential(conv_bn(c, c), conv_bn(c, c, relu=False), SqueezeExcite(c, 4))
        self.relu = nn.ReLU()

    def forward(self, x):
        return self.relu(x + self.body(x))


@zoo_model("squeeze_excite", image, tags=("residual", "gate"))
def squeeze_excite() -> nn.Module:
    return nn.Sequential(conv_bn(3, 12), SEBlock(12), classifier(12))


class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], dim=1)


@zoo_model("densenet", image, tags=("concat",))
def densenet() -> nn.Module:
    """Three dense layers (growth 4) concatenating onto an 8-channel stem, then a 1x1 transition."""
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False), DenseLayer(8, 4), DenseLayer(12, 4), DenseLayer(16, 4),
        nn.BatchNorm2d(20), nn.ReLU(), nn.Conv2d(20, 10, 1, bias=False), nn.AvgPool2d(2), classifier(10),
    )


class InceptionBlock(nn.Module):
    def __init__(self, cin: int):
        super().__init__()
        self.b1 = conv_bn(cin, 4, k=1)
        self.b3 = nn.Sequential(conv_bn(cin, 4, k=1), conv_bn(4, 6))
        self.b5 = nn.Sequential(conv_bn(cin, 2, k=1), conv_bn(2, 4, k=5))
        self.pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), conv_bn(cin, 2, k=1))

    def forward(self, x):
        return torch.cat([self.b1(x), self.b3(x), self.b5(x), self.pool(x)], dim=1)


@zoo_model("inception", image, tags=("concat",))
def inception() -> nn.Module:
    """Four parallel branches (1x1, 3x3, 5x5, pool) of unequal widths concatenated, twice."""
    return nn.Sequential(conv_bn(3, 8), InceptionBlock(8), InceptionBlock(16), classifier(16))


class UNet(nn.Module):
    """Two-level U-Net: ConvTranspose2d and bilinear interpolate up-sampling, skip concatenations, 2-class mask."""

    def __init__(self):
        super().__init__()
        self.enc1, self.enc2 = conv_bn(3, 8), conv_bn(8, 12)
        self.pool = nn.MaxPool2d(2)
        self.mid = conv_bn(12, 16)
        self.up2 = nn.ConvTranspose2d(16, 12, 2, stride=2)
        self.dec2 = conv_bn(24, 12)
        self.dec1 = conv_bn(20, 8)
        self.head = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        e1 = self.enc1(x)
        e2 = self.enc2(self.pool(e1))
        m = self.mid(self.pool(e2))
        d2 = self.dec2(torch.cat([self.up2(m), e2], dim=1))
        up1 = F.interpolate(d2, scale_factor=2.0, mode="bilinear", align_corners=False)
        d1 = self.dec1(torch.cat([up1, e1], dim=1))
        return self.head(d1)


@zoo_model("unet", image, tags=("concat", "upsample", "dense_output"))
def unet() -> nn.Module:
    return UNet()


class TinyYolo(nn.Module):
    """Backbone with two scales, an FPN-style nearest up-sample + concat, and one 1x1 head per scale."""

    def __init__(self, num_anchors: int = 2, num_classes: int = 3):
        super().__init__()
        out = num_anchors * (5 + num_classes)
        self.stem, self.c3 = conv_bn(3, 8, stride=2), conv_bn(8, 12, stride=2)
        self.c4 = conv_bn(12, 16, stride=2)
        self.lateral = conv_bn(16, 8, k=1)
        self.up = nn.Upsample(scale_factor=2, mode="nearest")
        self.fuse = conv_bn(20, 12)
        self.head_small, self.head_large = nn.Conv2d(16, out, 1), nn.Conv2d(12, out, 1)

    def forward(self, x):
        p3 = self.c3(self.stem(x))
        p4 = self.c4(p3)
        fused = self.fuse(torch.cat([self.up(self.lateral(p4)), p3], dim=1))
        return self.head_small(p4), self.head_large(fused)


@zoo_model("yolo_like", lambda: seeded_randn(2, 3, 32, 32), tags=("concat", "upsample", "multi_output"))
def yolo_like() -> nn.Module:
    return TinyYolo()


class SplitChunk(nn.Module):
    """torch.chunk into a GLU-style gate and torch.split into two branches re-joined by cat."""

    def __init__(self):
        super().__init__()
        self.stem = conv_bn(3, 16)
        self.left, self.right = conv_bn(6, 6), conv_bn(2, 4)
        self.head = classifier(10)

    def forward(self, x):
        halves = torch.chunk(self.stem(x), 2, dim=1)
        gated = halves[0] * torch.sigmoid(halves[1])
        parts = torch.split(gated, [6, 2], dim=1)
        return self.head(torch.cat([self.left(parts[0]), self.right(parts[1])], dim=1))


@zoo_model("split_chunk", image, tags=("split", "gate", "concat"))
def split_chunk() -> nn.Module:
    return SplitChunk()


class TwoInput(nn.Module):
    """An image branch and a tabular branch whose features are concatenated before the head."""

    def __init__(self):
        super().__init__()
        self.image = nn.Sequential(conv_bn(3, 8, stride=2), nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.table = nn.Sequential(nn.Linear(6, 8), nn.ReLU())
        self.head = nn.Sequential(nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 4))

    def forward(self, img, tab):
        return self.head(torch.cat([self.image(img), self.table(tab)], dim=1))


@zoo_model("two_input", lambda: (seeded_randn(2, 3, 16, 16), seeded_randn(2, 6, seed=1)), tags=("concat", "multi_input"))
def two_input() -> nn.Module:
    return TwoInput()
