"""Every reducer in REDUCERS, parametrised over the registry (a newly registered reducer is tested for free).

The reference is the registered scikit-learn estimator itself, fitted here by hand on the row-major flattened
float64 matrix (what ``nn.Flatten`` gives): a Reducer must return exactly its embedding / out-of-sample
transform, learn from the training samples only, and for linear reducers give the affine map its transform
is and fold into a model without changing the outputs. A reducer whose optional package is not installed is
skipped (and says why).
"""
from __future__ import annotations

import hashlib

import importlib.util

import numpy as np
import pytest
import torch

from prunekit.errors import ReducerError
from prunekit.reduce import REDUCERS, Reducer, fold_into

ALL = REDUCERS.names()
OUT_OF_SAMPLE = [n for n in ALL if REDUCERS.get(n).out_of_sample]
PICTURES_ONLY = [n for n in ALL if not REDUCERS.get(n).out_of_sample]
LINEAR = [n for n in ALL if REDUCERS.get(n).linear]
NON_LINEAR = [n for n in OUT_OF_SAMPLE if not REDUCERS.get(n).linear]
SUPERVISED = [n for n in ALL if REDUCERS.get(n).supervised]
K = 3


OPTIONAL_PACKAGES = {"umap": "umap"}  # reducer -> the optional package it imports (others must always build)


def estimator(method: str, k: int = K):
    """The registered factory's unfitted estimator; skip only a reducer whose optional package is absent here."""
    package = OPTIONAL_PACKAGES.get(method)
    if package is not None and importlib.util.find_spec(package) is None:
        pytest.skip(f"{method}: optional package {package!r} is not installed")
    return REDUCERS.get(method).factory(k, random_state=0)


def flat(x: torch.Tensor) -> np.ndarray:
    return x.reshape(len(x), -1).double().numpy()


def labels(method, y):
    return y.numpy() if REDUCERS.get(method).supervised else None


def fit_args(method, x, y):
    return (x, y) if REDUCERS.get(method).supervised else (x,)


def test_the_registry_kinds_are_all_populated():
    # each parametrisation below is non-empty, so none of them silently tests nothing
    assert OUT_OF_SAMPLE and PICTURES_ONLY and LINEAR and NON_LINEAR and SUPERVISED


@pytest.mark.parametrize("method", ALL)
def test_fit_transform_is_the_estimators_embedding(method, digits):
    x, y = digits
    x, y = x[:150], y[:150]
    est = estimator(method)
    ref = est.fit_transform(flat(x), labels(method, y)) if REDUCERS.get(method).supervised else est.fit_transform(flat(x))
    ours = Reducer(method, K).fit_transform(*fit_args(method, x, y))
    assert ours.dtype == torch.float32 and ours.shape == (150, K)
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("method", OUT_OF_SAMPLE)
def test_out_of_sample_transform_learns_from_the_training_split_only(method, digits):
    x, y = digits
    train, test = x[:200], x[200:260]
    est = estimator(method)
    if REDUCERS.get(method).supervised:
        est.fit(flat(train), y[:200].numpy())
    else:
        est.fit(flat(train))
    reducer = Reducer(method, K).fit(*fit_args(method, train, y[:200]))
    np.testing.assert_allclose(reducer.transform(test).numpy(), est.transform(flat(test)), rtol=1e-4, atol=1e-4)
    assert reducer.fitted_on_ == {"n_samples": 200, "sha1": hashlib.sha1(flat(train).tobytes()).hexdigest()}
    assert reducer.n_features_in_ == 64 and reducer.n_components_ == K and reducer.input_shape_ == (1, 8, 8)


@pytest.mark.parametrize("method", PICTURES_ONLY)
def test_pictures_only_reducers_have_no_out_of_sample_transform(method, digits):
    x, y = digits
    estimator(method)  # skips when the optional package is missing
    reducer = Reducer(method, 2)
    reducer.fit(*fit_args(method, x[:100], y[:100]))
    with pytest.raises(ReducerError, match="no out-of-sample transform"):
        reducer.transform(x[100:110])


@pytest.mark.parametrize("method", LINEAR)
def test_linear_reducers_are_their_affine_map_and_fold_exactly(method, digits, tiny_mlp):
    x, y = digits
    reducer = Reducer(method, K).fit(*fit_args(method, x[:300], y[:300]))
    a, c = reducer.affine_map()
    assert a.shape == (K, 64) and c.shape == (K,)
    np.testing.assert_allclose(reducer.transform(x[300:]).numpy(), flat(x[300:]) @ a.T + c, rtol=1e-4, atol=1e-4)
    model = tiny_mlp(K)
    reference = model(reducer.transform(x[300:]))
    for how in ("merge", "prepend"):
        torch.testing.assert_close(fold_into(model, reducer, how=how)(x[300:]), reference, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("method", NON_LINEAR)
def test_non_linear_reducers_refuse_the_affine_map_and_folding(method, digits, tiny_mlp):
    x, y = digits
    estimator(method)
    reducer = Reducer(method, K).fit(*fit_args(method, x[:200], y[:200]))
    with pytest.raises(ReducerError, match="non-linear"):
        reducer.affine_map()
    with pytest.raises(ReducerError, match="non-linear"):
        fold_into(tiny_mlp(K), reducer)


@pytest.mark.parametrize("method", SUPERVISED)
def test_supervised_reducers_need_the_labels(method, digits):
    x, y = digits
    with pytest.raises(ReducerError, match="supervised"):
        Reducer(method, K).fit(x[:100])
    with pytest.raises(ReducerError, match="one label per sample"):
        Reducer(method, K).fit(x[:100], y[:99])
