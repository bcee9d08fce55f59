"""LeNet-300-100: the 784-300-100-10 fully connected network of the pruning literature (Han et al. 2015)."""
from __future__ import annotations

from torch import nn

from . import register_model
from .mlp import MLP


@register_model("lenet300_100")
def lenet300_100(in_features: int = 784, num_classes: int = 10) -> nn.Module:
    """Flatten -> Linear(in, 300) -> ReLU -> Linear(300, 100) -> ReLU -> Linear(100, num_classes)."""
    return MLP(in_features, (300, 100), num_classes, dropout=0.0)


@register_model("lenet5")
def lenet5(in_channels: int = 1, num_classes: int = 10, image_size: int = 28) -> nn.Module:
    """LeNet-5 as in Caffe and Deep Compression (Han et al. 2016, 431K weights at 28x28):
    conv(20, 5x5) -> maxpool -> conv(50, 5x5) -> maxpool -> flatten -> fc(500) -> ReLU -> fc(classes)."""
    side = ((image_size - 4) // 2 - 4) // 2
    if side < 1:
        from ..errors import ConfigError

        raise ConfigError(f"lenet5 needs images of at least 16x16 (two 5x5 convolutions and two 2x2 poolings); got "
                          f"image_size={image_size}")
    return nn.Sequential(
        nn.Conv2d(in_channels, 20, 5), nn.MaxPool2d(2), nn.Conv2d(20, 50, 5), nn.MaxPool2d(2),
        nn.Flatten(), nn.Linear(50 * side * side, 500), nn.ReLU(inplace=True), nn.Linear(500, num_classes),
    )
