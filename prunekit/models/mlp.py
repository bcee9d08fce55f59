"""Fully connected classifiers: a configurable MLP and LeNet-300-100 (the classic pruning benchmark)."""
from __future__ import annotations

from typing import Sequence

from torch import nn

from . import register_model


class MLP(nn.Module):
    """Flatten -> [Linear -> ReLU -> Dropout] per hidden width -> Linear(num_classes).

    The leading ``nn.Flatten`` lets the same model take (N, D) vectors or (N, C, H, W) images.
    """

    def __init__(self, in_features: int, hidden: Sequence[int] = (256, 128), num_classes: int = 10, dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
            width = h
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


@register_model("mlp")
def mlp(in_features: int = 64, hidden: Sequence[int] = (256, 128), num_classes: int = 10, dropout: float = 0.0) -> nn.Module:
    """An MLP; ``in_features`` defaults to 64 (flattened 8x8 digits)."""
    return MLP(in_features, tuple(hidden), num_classes, dropout)
