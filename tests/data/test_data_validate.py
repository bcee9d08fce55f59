"""DataSplits.validate / check_finite / check_labels: counts and first indices equal an independent numpy reference."""
import re

import numpy as np
import pytest
import torch

from prunekit.data.base import DataSplits, check_finite, check_labels
from prunekit.errors import InputError


@pytest.mark.parametrize("as_tensor", [False, True])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_count_and_first_index_match_numpy(seed, as_tensor):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(50, 3, 4)).astype(np.float32)
    flat = rng.choice(x.size, size=rng.integers(1, 9), replace=False)
    x.reshape(-1)[flat] = rng.choice([np.nan, np.inf, -np.inf], size=len(flat))
    bad = ~np.isfinite(x)
    first = tuple(np.argwhere(bad)[0])  # argwhere is row-major: the first offending element
    with pytest.raises(InputError) as excinfo:
        check_finite(torch.from_numpy(x) if as_tensor else x, "demo: x_val")
    msg = str(excinfo.value)
    assert f"holds {bad.sum()} non-finite" in msg
    assert f"x_val[{', '.join(map(str, first))}] (sample {first[0]})" in msg
    nans = int(np.isnan(x).sum())
    counted = dict((k, int(n)) for n, k in re.findall(r"(\d+) (NaN|inf)", msg))
    assert counted.get("NaN", 0) == nans and counted.get("inf", 0) == bad.sum() - nans


def test_finite_data_passes_even_when_its_sum_overflows():
    check_finite(np.full((4, 2), 3e38, dtype=np.float32), "x")  # float32 sum is inf, every value is finite
    check_finite(torch.full((4, 2), -3e38), "x")
    check_finite(np.arange(12).reshape(4, 3), "x")  # integers cannot be NaN


def test_labels_out_of_range_counted_like_numpy():
    y = np.array([0, 2, 5, 1, -3, 4, 2])
    with pytest.raises(InputError) as excinfo:
        check_labels(torch.from_numpy(y), 4, "d: y_test")
    expected = int(((y < 0) | (y >= 4)).sum())
    assert f"holds {expected} labels outside 0..3" in str(excinfo.value) and "y_test[2] = 5" in str(excinfo.value)
    check_labels(torch.tensor([0, 3, 1]), 4, "d: y_test")
    with pytest.raises(InputError, match="one-hot"):
        check_labels(torch.eye(3, dtype=torch.long), 3, "d: y_train")


def test_validate_checks_only_the_requested_splits_and_returns_self():
    x, y = torch.randn(10, 2), torch.arange(10) % 2
    bad = x.clone()
    bad[4, 1] = float("nan")
    data = DataSplits(x, y, x, y, bad, y, num_classes=2, name="toy")
    assert data.validate(("train", "val")) is data
    with pytest.raises(InputError, match=r"dataset 'toy': x_test holds 1 non-finite value .*x_test\[4, 1\]"):
        data.validate()
    with pytest.raises(InputError, match="x_train has 10 samples but y_train has 9"):
        data.replace(y_train=y[:9]).validate(("train",))
