"""Shared fixtures for the reduce tests: small seeded slices of scikit-learn's bundled datasets."""
import numpy as np
import pytest
import torch
from sklearn.datasets import load_breast_cancer, load_digits


@pytest.fixture(scope="session")
def digits():
    """(x as (N,1,8,8) float tensor, y int64) for 600 digits, scaled to [0, 1]."""
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x[:600] / 16.0, dtype=torch.float32).reshape(-1, 1, 8, 8)
    return x, torch.tensor(y[:600], dtype=torch.int64)


@pytest.fixture(scope="session")
def cancer():
    x, y = load_breast_cancer(return_X_y=True)
    x = (x - x.mean(0)) / x.std(0)
    return torch.tensor(x, dtype=torch.float32), torch.tensor(y, dtype=torch.int64)


def _tiny_mlp(in_features: int, num_classes: int = 10, hidden: int = 16, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(in_features, hidden), torch.nn.ReLU(), torch.nn.Linear(hidden, num_classes)
    )


@pytest.fixture
def tiny_mlp():
    """Factory of seeded Flatten-Linear-ReLU-Linear models on ``in_features`` inputs."""
    return _tiny_mlp


@pytest.fixture
def rng():
    return np.random.default_rng(0)
