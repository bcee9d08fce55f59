"""A user's own model and data, reachable from a recipe as ``examples.custom_model:build`` / ``:make_data``."""
import numpy as np
from torch import nn


def build(in_features: int = 30, num_classes: int = 2, hidden: int = 64) -> nn.Module:
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(),
                         nn.Linear(hidden, num_classes))


def make_data():
    """Two noisy Gaussian classes as plain arrays (the loader splits them stratified)."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 600)
    x = rng.normal(size=(600, 30)).astype("float32") + y[:, None] * 0.8
    return x, y
