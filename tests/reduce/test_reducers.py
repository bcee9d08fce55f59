"""Reducers: sklearn equivalence, save/load round trips, registry extension and the clear errors for bad input."""
import importlib.util

import numpy as np
import pytest
import torch
from sklearn.decomposition import PCA

from prunekit.errors import ConfigError, ReducerError
from prunekit.reduce import REDUCERS, Reducer, load_reducer, register_reducer, save_reducer

# every registered reducer with an out-of-sample transform (a new one is tested for free); built-ins must stay
PIPELINE_METHODS = [n for n in REDUCERS.names() if REDUCERS.get(n).out_of_sample]


def test_built_in_pipeline_reducers_stay_registered():
    assert {"pca", "lda", "kernel_pca", "isomap", "lle"} <= set(PIPELINE_METHODS)


def test_images_are_flattened_like_nn_flatten(digits):
    x, _ = digits
    ours = Reducer("pca", 5).fit(x[:300]).transform(x[300:])
    ref = PCA(5, random_state=0).fit(x[:300].reshape(300, -1).double().numpy()).transform(x[300:].reshape(300, -1).double().numpy())
    np.testing.assert_allclose(ours.numpy(), ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", PIPELINE_METHODS)
def test_round_trip_through_save_and_load(method, digits, tmp_path):
    x, y = digits
    reducer = Reducer(method, 4).fit(x[:250], y[:250])
    path = save_reducer(reducer, tmp_path / f"{method}.skops")
    loaded = load_reducer(path)
    assert loaded.method == method and loaded.input_shape_ == (1, 8, 8) and loaded.fitted_on_ == reducer.fitted_on_
    assert torch.equal(loaded.transform(x[250:300]), reducer.transform(x[250:300]))


def test_load_refuses_untrusted_types(tmp_path):
    import skops.io as sio
    from fractions import Fraction  # stands in for an arbitrary type skops does not trust by default

    sio.dump({"format": "prunekit.reducer/1", "estimator": Fraction(1, 3)}, str(tmp_path / "bad.skops"))
    untrusted = sio.get_untrusted_types(file=str(tmp_path / "bad.skops"))
    assert untrusted  # the reference: skops itself flags the type
    with pytest.raises(ReducerError, match="not allow-listed"):
        load_reducer(tmp_path / "bad.skops")


def test_missing_and_corrupt_files(tmp_path):
    with pytest.raises(ReducerError, match="does not exist"):
        load_reducer(tmp_path / "none.skops")
    (tmp_path / "junk.skops").write_bytes(b"not a zip")
    with pytest.raises(ReducerError, match="not a readable"):
        load_reducer(tmp_path / "junk.skops")


def test_users_can_register_a_reducer(digits):
    from sklearn.decomposition import TruncatedSVD

    from prunekit.reduce.registry import pca_map

    @register_reducer("test_svd", linear_map=lambda est: (est.components_, np.zeros(est.components_.shape[0])))
    def test_svd(n_components, *, random_state=0, **kw):
        return TruncatedSVD(n_components=n_components, random_state=random_state, **kw)

    try:
        x, _ = digits
        r = Reducer("test_svd", 3).fit(x[:200])
        a, c = r.affine_map()
        ref = TruncatedSVD(3, random_state=0).fit(x[:200].reshape(200, -1).double().numpy())
        np.testing.assert_allclose(a, ref.components_, atol=1e-8)
        assert pca_map is REDUCERS.get("pca").linear_map
    finally:
        REDUCERS.unregister("test_svd")


def test_unknown_method_lists_known_ones():
    with pytest.raises(ConfigError, match="pca"):
        Reducer("pcaa", 2).fit(np.zeros((4, 3)))


@pytest.mark.parametrize("method", PIPELINE_METHODS)
def test_more_components_than_features(method, digits):
    x, y = digits
    with pytest.raises(ReducerError, match=r"n_components=65 exceeds the number of input features \(64\)"):
        Reducer(method, 65).fit(x[:100], y[:100])


def test_more_components_than_samples(digits):
    x, _ = digits
    with pytest.raises(ReducerError, match=r"exceeds the number of training samples \(10\)"):
        Reducer("pca", 20).fit(x[:10])


def test_lda_more_components_than_classes_minus_one(cancer):
    x, y = cancer
    with pytest.raises(ReducerError, match=r"classes - 1 = 2 - 1 = 1"):
        Reducer("lda", 2).fit(x, y)
    with pytest.raises(ReducerError, match="supervised"):
        Reducer("lda", 1).fit(x)


def test_reducer_fitted_on_another_dimension(digits, cancer):
    x, _ = digits
    reducer = Reducer("pca", 4).fit(x[:100])
    with pytest.raises(ReducerError, match=r"fitted on 64 features .* got data with 30 features"):
        reducer.transform(cancer[0])


# every pictures-only reducer (no out-of-sample transform) is checked in test_every_reducer.py
@pytest.mark.skipif(importlib.util.find_spec("umap") is not None, reason="umap-learn is installed here")
def test_umap_without_umap_learn_says_how_to_install_it(digits):
    x, _ = digits
    with pytest.raises(ReducerError, match="umap-learn"):
        Reducer("umap", 2).fit_transform(x[:100])


def test_unfitted_reducer_says_so():
    with pytest.raises(ReducerError, match="not fitted"):
        Reducer("pca", 2).transform(np.zeros((3, 4)))


@pytest.mark.parametrize("method", ["kernel_pca", "isomap", "pca"])
def test_pipeline_directory_round_trip(method, digits, tmp_path):
    from prunekit.models import create_model
    from prunekit.reduce import ReducedModel, load_pipeline, save_pipeline

    x, y = digits
    reducer = Reducer(method, 6).fit(x[:300])
    torch.manual_seed(0)
    spec = {"name": "mlp", "kwargs": {"in_features": 6, "hidden": [8], "num_classes": 10}}
    model = create_model(spec["name"], **spec["kwargs"]).eval()
    save_pipeline(tmp_path / "pipe", reducer, model, model_spec=spec)
    loaded = load_pipeline(tmp_path / "pipe")  # architecture rebuilt from the recorded spec
    reference = model(torch.as_tensor(reducer.estimator_.transform(x[300:].reshape(300, -1).double().numpy()),
                                      dtype=torch.float32))  # sklearn then the model, by hand
    torch.testing.assert_close(loaded(x[300:]), reference, atol=1e-4, rtol=1e-4)
    assert isinstance(loaded, ReducedModel) and loaded.reducer.method == method
