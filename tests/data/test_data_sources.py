"""NPZ round trips, ``module:function`` datasets, and the errors bad arrays produce (naming file / key and the fix)."""
from __future__ import annotations

import sys
import textwrap

import numpy as np
import pytest
import torch

from prunekit.data import DATASETS, DataSplits, load_data, register_dataset
from prunekit.data.arrays import RawData
from prunekit.errors import ConfigError, InputError


def arrays(n: int = 60, d: int = 5, classes: int = 3, seed: int = 0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    x[:, 0] = np.arange(n)  # sample id, to check where each sample went
    return x, np.arange(n) % classes


def test_npz_round_trip_with_all_splits(tmp_path):
    (xa, ya), (xb, yb), (xc, yc) = arrays(60), arrays(15, seed=1), arrays(21, seed=2)
    path = tmp_path / "d.npz"
    np.savez(path, x_train=xa, y_train=ya, x_val=xb, y_val=yb, x_test=xc, y_test=yc, class_names=np.array(["a", "b", "c"]))
    data = load_data(name="npz", path=str(path), normalize="none")
    for split, (x, y) in (("train", (xa, ya)), ("val", (xb, yb)), ("test", (xc, yc))):
        np.testing.assert_array_equal(getattr(data, f"x_{split}").numpy(), x)  # given splits keep their order
        np.testing.assert_array_equal(getattr(data, f"y_{split}").numpy(), y)
    assert data.class_names == ["a", "b", "c"] and data.num_classes == 3 and data.input_shape == (5,)


def test_npz_missing_splits_are_carved_from_train(tmp_path):
    x, y = arrays(100)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    data = load_data(name="npz", path=str(tmp_path / "d.npz"), normalize="none")
    seen = [data.x_train[:, 0], data.x_val[:, 0], data.x_test[:, 0]]
    assert sorted(torch.cat(seen).long().tolist()) == list(range(100))
    assert (len(seen[0]), len(seen[1]), len(seen[2])) == (70, 15, 15)


def test_npz_image_layout_from_square_features(tmp_path):
    x, y = arrays(40, d=16)
    np.savez(tmp_path / "d.npz", x_train=x, y_train=y)
    assert load_data(name="npz", path=str(tmp_path / "d.npz"), layout="image").input_shape == (1, 4, 4)
    assert load_data(name="npz", path=str(tmp_path / "d.npz")).input_shape == (16,)


@pytest.mark.parametrize(
    "content,match",
    [
        ({"x_train": np.zeros((4, 2))}, "'y_train'"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(4)}, "found: x, y"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(3)}, "4 samples but y_train has 3"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.array([0, 1.5, 0, 1])}, "non-integer"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.array([0, -1, 0, 1])}, "negative"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4, int), "x_test": np.zeros((2, 3)), "y_test": np.zeros(2, int)}, "x_test samples have shape"),
        ({"x_train": np.zeros((4, 2)), "y_train": np.zeros(4, int), "x_val": np.zeros((2, 2))}, "'x_val' but no 'y_val'"),
    ],
)
def test_npz_bad_arrays_name_file_and_key(tmp_path, content, match):
    path = tmp_path / "bad.npz"
    np.savez(path, **content)
    with pytest.raises(InputError, match=match) as info:
        load_data(name="npz", path=str(path))
    assert "bad.npz" in str(info.value)


def test_npz_object_arrays_are_refused_not_unpickled(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, x_train=np.array([[1], [2]], dtype=object), y_train=np.array([0, 1]))
    with pytest.raises(InputError, match="obj.npz"):
        load_data(name="npz", path=str(path))


def test_npz_missing_file_and_missing_path(tmp_path):
    with pytest.raises(InputError, match="absent.npz"):
        load_data(name="npz", path=str(tmp_path / "absent.npz"))
    with pytest.raises(ConfigError, match="data.path"):
        load_data(name="npz")


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    (tmp_path / "pk_user_data.py").write_text(textwrap.dedent("""
        import numpy as np
        import torch
        from prunekit.data import DataSplits

        def pair(n=50):
            return np.arange(n * 2, dtype=float).reshape(n, 2), np.arange(n) % 2

        def tensors():
            x = torch.arange(80.0).reshape(40, 2)
            return {"x_train": x, "y_train": torch.arange(40) % 4, "class_names": ["w", "x", "y", "z"]}

        def splits():
            t = torch.zeros(3, 2)
            y = torch.zeros(3, dtype=torch.long)
            return DataSplits(t, y, t, y, t, y, num_classes=7, name="mine")

        def wrong():
            return "a string"
    """))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "pk_user_data"
    sys.modules.pop("pk_user_data", None)


def test_function_returning_x_y_pair_is_split(user_module):
    data = load_data(name=f"{user_module}:pair", kwargs={"n": 100}, normalize="none")
    assert len(data.x_train) + len(data.x_val) + len(data.x_test) == 100 and data.num_classes == 2
    assert sorted(torch.cat([data.x_train, data.x_val, data.x_test])[:, 0].long().tolist()) == list(range(0, 200, 2))


def test_function_returning_dict_of_tensors(user_module):
    data = load_data(name=f"{user_module}:tensors", normalize="none", layout="flat")
    assert data.class_names == ["w", "x", "y", "z"] and data.num_classes == 4 and data.input_shape == (2,)


def test_function_returning_datasplits_is_used_as_is(user_module):
    data = load_data(name=f"{user_module}:splits")
    assert data.name == "mine" and data.num_classes == 7


def test_function_errors(user_module):
    with pytest.raises(InputError, match="returned str"):
        load_data(name=f"{user_module}:wrong")
    with pytest.raises(ConfigError, match="no attribute"):
        load_data(name=f"{user_module}:absent")
    with pytest.raises(ConfigError, match="cannot import"):
        load_data(name="pk_no_such_module:f")


def test_registered_dataset_extension_point():
    @register_dataset("pk_test_tiny")
    def tiny(cfg):
        x, y = arrays(30, classes=2)
        return RawData(x, y, source="tiny")

    try:
        data = load_data(name="pk_test_tiny", normalize="none", val_fraction=0.2, test_fraction=0.2)
        assert (len(data.x_train), len(data.x_val), len(data.x_test)) == (18, 6, 6)
        assert data.info["source"] == "tiny" and isinstance(data, DataSplits)
    finally:
        DATASETS.unregister("pk_test_tiny")
