"""Small CNNs for 8x8 / 28x28 single-channel images (the digits demo's default model)."""
from __future__ import annotations

from torch import nn

from . import register_model


class SmallCNN(nn.Module):
    """conv(c1)-BN-ReLU -> conv(c2)-BN-ReLU -> maxpool -> conv(c3)-BN-ReLU -> avgpool(2) -> flatten -> fc(hidden) -> fc(classes)."""

    def __init__(self, in_channels: int = 1, num_classes: int = 10, widths=(32, 64, 64), hidden: int = 128):
        super().__init__()
        c1, c2, c3 = widths
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, c1, 3, padding=1, bias=False), nn.BatchNorm2d(c1), nn.ReLU(inplace=True),
            nn.Conv2d(c1, c2, 3, padding=1, bias=False), nn.BatchNorm2d(c2), nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.Conv2d(c2, c3, 3, padding=1, bias=False), nn.BatchNorm2d(c3), nn.ReLU(inplace=True),
            nn.AdaptiveAvgPool2d(2),
        )
        self.classifier = nn.Sequential(
            nn.Flatten(), nn.Linear(c3 * 4, hidden), nn.ReLU(inplace=True), nn.Dropout(0.1), nn.Linear(hidden, num_classes)
        )

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("digits_cnn")
def digits_cnn(in_channels: int = 1, num_classes: int = 10, widths=(32, 64, 64), hidden: int = 128) -> nn.Module:
    """The demo's CNN for scikit-learn digits (1x8x8 inputs)."""
    return SmallCNN(in_channels, num_classes, tuple(widths), hidden)
