"""Splits are stratified and disjoint, subsets keep class shares, normalisation statistics come from train only."""
from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

from prunekit.data import DataConfig, load_data
from prunekit.errors import ConfigError
from prunekit.recipe.schema import from_dict


@pytest.fixture
def id_dataset(tmp_path, monkeypatch):
    """A ``module:function`` dataset whose first feature is the sample's id (imbalanced classes 0..3)."""
    (tmp_path / "pk_ids_data.py").write_text(textwrap.dedent("""
        import numpy as np

        def make(n=400):
            rng = np.random.default_rng(0)
            y = np.repeat([0, 1, 2, 3], [n // 2, n // 4, n // 8, n - n // 2 - n // 4 - n // 8])
            x = np.column_stack([np.arange(n), rng.normal(size=(n, 3)) * [1.0, 5.0, 0.1] + [0.0, 3.0, -2.0]])
            return x, y
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "pk_ids_data:make"
    sys.modules.pop("pk_ids_data", None)


def ids(x: torch.Tensor) -> set:
    return set(x[:, 0].round().long().tolist())


def test_digits_default_is_1x8x8_and_70_15_15():
    data = load_data()
    n = 1797
    assert data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert len(data.x_test) == round(0.15 * n) and len(data.x_val) == round(0.15 * n)
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == n
    assert data.x_train.dtype == torch.float32 and data.y_train.dtype == torch.int64


def test_digits_flat_and_breast_cancer_shapes():
    assert load_data(layout="flat").input_shape == (64,)
    cancer = load_data(name="breast_cancer")
    assert cancer.input_shape == (30,) and cancer.num_classes == 2
    with pytest.raises(ConfigError, match="layout"):
        load_data(name="breast_cancer", layout="image")  # 30 features are not a square image


def test_splits_are_disjoint_cover_everything_and_stratified(id_dataset):
    data = load_data(name=id_dataset, normalize="none", seed=3)
    parts = [ids(data.x_train), ids(data.x_val), ids(data.x_test)]
    assert sum(len(p) for p in parts) == 400 == len(set().union(*parts))
    y_all = np.repeat([0, 1, 2, 3], [200, 100, 50, 50])
    for y, share in ((data.y_val, 0.15), (data.y_test, 0.15)):
        counts = np.bincount(y.numpy(), minlength=4)
        assert np.all(np.abs(counts - share * np.bincount(y_all)) <= 1)  # each class within one sample of its share


def test_seed_changes_the_split_but_is_reproducible(id_dataset):
    a, b, c = (load_data(name=id_dataset, normalize="none", seed=s) for s in (0, 0, 1))
    assert ids(a.x_test) == ids(b.x_test)
    assert ids(a.x_test) != ids(c.x_test)


def test_train_subset_is_stratified_and_drawn_from_train(id_dataset):
    full = load_data(name=id_dataset, normalize="none")
    small = load_data(name=id_dataset, normalize="none", train_subset=80, test_subset=20)
    assert len(small.x_train) == 80 and len(small.x_test) == 20
    assert ids(small.x_train) <= ids(full.x_train) and ids(small.x_val) == ids(full.x_val)
    counts = np.bincount(small.y_train.numpy(), minlength=4)
    expected = 80 * np.bincount(full.y_train.numpy(), minlength=4) / len(full.y_train)
    assert np.all(np.abs(counts - expected) <= 1)


def test_standard_normalisation_uses_train_statistics_only(id_dataset):
    raw = load_data(name=id_dataset, normalize="none")
    std = load_data(name=id_dataset, normalize="standard")
    x = raw.x_train.double().numpy()
    mean, sd = x.mean(axis=0), x.std(axis=0)
    for split in ("train", "val", "test"):
        expected = (getattr(raw, f"x_{split}").double().numpy() - mean) / sd
        np.testing.assert_allclose(getattr(std, f"x_{split}").numpy(), expected, rtol=1e-5, atol=1e-5)
    assert abs(float(std.x_val[:, 2].mean())) > 1e-4  # val is not standardised with its own mean
    assert std.info["normalization"]["mean"] == pytest.approx(mean.tolist())


def test_standard_normalisation_is_per_channel_for_images():
    raw, std = load_data(normalize="none"), load_data(normalize="standard")
    x = raw.x_train.double().numpy()
    expected = (raw.x_test.double().numpy() - x.mean()) / x.std()  # one channel: statistics over N, H, W
    np.testing.assert_allclose(std.x_test.numpy(), expected, rtol=1e-5, atol=1e-5)


def test_unit_normalisation_divides_by_train_max():
    raw, unit = load_data(normalize="none"), load_data(normalize="unit")
    assert float(raw.x_train.max()) == 16.0  # digits pixels are 0..16
    torch.testing.assert_close(unit.x_val, raw.x_val / 16.0)
    assert unit.info["normalization"] == {"kind": "unit", "scale": 16.0}


@pytest.mark.parametrize(
    "section,key",
    [({"val_fraction": 0.0}, "val_fraction"), ({"val_fraction": 0.5, "test_fraction": 0.5}, "test_fraction"),
     ({"train_subset": 0}, "train_subset"), ({"layout": "nchw"}, "layout"), ({"shuffle": True}, "shuffle")],
)
def test_bad_config_names_the_key(section, key):
    with pytest.raises(ConfigError, match=key):
        from_dict(DataConfig, section, "data")


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ConfigError, match="fashion_mnist"):
        load_data(name="cifar10")
