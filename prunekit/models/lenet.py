"""LeNet-300-100: the 784-300-100-10 fully connected network of the pruning literature (Han et al. 2015)."""
from __future__ import annotations

from torch import nn

from . import register_model
from .mlp import MLP


@register_model("lenet300_100")
def lenet300_100(in_features: int = 784, num_classes: int = 10) -> nn.Module:
    """Flatten -> Linear(in, 300) -> ReLU -> Linear(300, 100) -> ReLU -> Linear(100, num_classes)."""
    return MLP(in_features, (300, 100), num_classes, dropout=0.0)
