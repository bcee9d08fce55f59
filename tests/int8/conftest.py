"""Shared int8 fixtures: the digits data and a digits CNN / MLP trained a few epochs (once per session)."""
import pytest
import torch
from torch import nn

from prunekit.data import load_data
from prunekit.models import create_model
from prunekit.train import FitConfig, fit


@pytest.fixture(scope="session")
def digits():
    return load_data(name="digits", layout="image", normalize="unit")


@pytest.fixture(scope="session")
def cnn(digits):
    torch.manual_seed(0)
    model = create_model("digits_cnn")
    fit(model, digits, FitConfig(epochs=3, seed=0))
    return model.eval()


@pytest.fixture(scope="session")
def mlp(digits):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(),
                          nn.Linear(256, 10))
    fit(model, digits, FitConfig(epochs=3, seed=0))
    return model.eval()


@pytest.fixture(scope="session")
def train_batches(digits):
    return list(digits.loader("train", 64, shuffle=True, seed=0))[:8]
