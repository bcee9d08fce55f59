"""RawData: the arrays a dataset source returns, checked (lengths, labels, feature shapes) before any splitting."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Optional

import numpy as np

from ..errors import InputError
from .base import check_finite, first_true

SPLITS = ("train", "val", "test")
ARRAY_KEYS = tuple(f"{p}_{s}" for s in SPLITS for p in ("x", "y"))


@dataclass
class RawData:
    """Unprepared arrays of one source; missing val/test splits are carved out of train later."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: Optional[np.ndarray] = None
    y_val: Optional[np.ndarray] = None
    x_test: Optional[np.ndarray] = None
    y_test: Optional[np.ndarray] = None
    source: str = "data"  # file / function the arrays came from, for error messages and DataSplits.info
    image: bool = False  # the natural layout is an image (N x H x W or N x C x H x W), not a feature vector
    class_names: Optional[list] = None
    info: dict = field(default_factory=dict)

    def pairs(self) -> Dict[str, tuple]:
        """``{split: (x, y)}`` for the splits present."""
        return {s: (getattr(self, f"x_{s}"), getattr(self, f"y_{s}")) for s in SPLITS if getattr(self, f"x_{s}") is not None}


def from_arrays(arrays: Dict[str, Any], source: str, **extra: Any) -> RawData:
    """Build and check RawData from npz-style keys; errors name ``source`` and the key."""
    for key in ("x_train", "y_train"):
        if key not in arrays:
            raise InputError(
                f"{source} has no array {key!r} (found: {', '.join(sorted(arrays)) or 'none'}); "
                "provide x_train and y_train, optionally x_val/y_val and x_test/y_test "
                "(e.g. np.savez(path, x_train=x, y_train=y))"
            )
    for split in ("val", "test"):
        if (f"x_{split}" in arrays) != (f"y_{split}" in arrays):
            have, lack = (f"x_{split}", f"y_{split}") if f"x_{split}" in arrays else (f"y_{split}", f"x_{split}")
            raise InputError(f"{source} has {have!r} but no {lack!r}; provide both or neither")
    kwargs = {k: np.asarray(arrays[k]) for k in ARRAY_KEYS if k in arrays}
    raw = RawData(**kwargs, source=source, **extra)
    check(raw)
    return raw


def check(raw: RawData) -> RawData:
    """Same sample count in x and y, integer non-negative labels, same sample shape in every split, no NaN / inf."""
    shape = None
    for split, (x, y) in raw.pairs().items():
        if x.dtype == object or y.dtype == object:
            raise InputError(f"{raw.source}: x_{split}/y_{split} must be numeric arrays, not Python objects")
        if x.ndim < 2:
            raise InputError(f"{raw.source}: x_{split} has shape {x.shape}; expected (samples, features...) with at least 2 dims")
        y = labels(y, f"{raw.source}: y_{split}")
        setattr(raw, f"y_{split}", y)
        if len(x) != len(y):
            raise InputError(
                f"{raw.source}: x_{split} has {len(x)} samples but y_{split} has {len(y)} labels; they must match one to one"
            )
        if shape is not None and x.shape[1:] != shape:
            raise InputError(f"{raw.source}: x_{split} samples have shape {x.shape[1:]} but x_train samples have {shape}")
        shape = x.shape[1:]
        if not np.issubdtype(x.dtype, np.number) and x.dtype != bool:
            raise InputError(f"{raw.source}: x_{split} has dtype {x.dtype}; features must be numbers")
        check_finite(x, f"{raw.source}: x_{split}")  # before normalisation, which would spread a NaN over its feature
    if len(raw.y_train) == 0:
        raise InputError(f"{raw.source}: x_train is empty; the dataset needs training samples")
    return raw


def labels(y: np.ndarray, where: str) -> np.ndarray:
    """Class labels as int64 in 0..K-1 order; floats must be whole numbers, strings/negatives are refused."""
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1:
        raise InputError(f"{where} has shape {y.shape}; labels must be a 1-D array of class indices (not one-hot)")
    if y.dtype == bool or np.issubdtype(y.dtype, np.integer):
        y = y.astype(np.int64)
    elif np.issubdtype(y.dtype, np.floating):
        count, first = first_true(~(np.isfinite(y) & (y == np.round(y))))
        if count:
            raise InputError(
                f"{where} holds {count} non-integer label{'s' if count > 1 else ''} ({y.dtype}); the first is "
                f"index {first[0]} = {y[first]}; encode classes as integers 0..K-1 "
                "and drop the samples without a label"
            )
        y = y.astype(np.int64)
    else:
        sample = ", ".join(map(str, y[:3]))
        raise InputError(f"{where} holds non-integer labels ({y.dtype}: {sample}, ...); encode classes as integers 0..K-1")
    count, first = first_true(y < 0)
    if count:
        raise InputError(f"{where} holds {count} negative label{'s' if count > 1 else ''}; the first is index "
                         f"{first[0]} = {int(y[first])}; encode classes as integers 0..K-1")
    return y
