"""DataSplits: the train / validation / test tensors every stage of a run shares."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Iterable, Optional, Tuple

import numpy as np
import torch
from torch.utils.data import DataLoader, TensorDataset

from ..errors import InputError

CLEAN_HINT = ("clean the data before training: drop those samples or impute the missing values "
              "(e.g. with the training split's feature mean)")


@dataclass
class DataSplits:
    """Tensors of one classification task. ``x_*`` are float features, ``y_*`` int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str = "data"
    class_names: Optional[list] = None
    info: dict = field(default_factory=dict)  # e.g. {"source": path, "subset": n}

    @property
    def input_shape(self) -> tuple:
        """Shape of one sample (without the batch dimension)."""
        return tuple(self.x_train.shape[1:])

    def loader(self, split: str, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader:
        x, y = self.split(split)
        gen = torch.Generator()
        gen.manual_seed(seed)
        return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=gen)

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return getattr(self, f"x_{split}"), getattr(self, f"y_{split}")

    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        return self.x_train[:batch_size].clone()

    def validate(self, splits: Iterable[str] = ("train", "val", "test"), where: Optional[str] = None) -> "DataSplits":
        """Refuse, with an :class:`InputError`, NaN / inf features, non-integer labels or labels outside
        ``0..num_classes-1`` in ``splits``; each message names the split, how many values and the first index."""
        where = where or f"dataset {self.name!r}"
        if int(self.num_classes) < 1:
            raise InputError(f"{where}: num_classes is {self.num_classes}; a classification task needs at least 1 class")
        for split in splits:
            x, y = self.split(split)
            if len(x) != len(y):
                raise InputError(f"{where}: x_{split} has {len(x)} samples but y_{split} has {len(y)} labels; "
                                 "they must match one to one")
            check_finite(x, f"{where}: x_{split}")
            check_labels(y, self.num_classes, f"{where}: y_{split}")
        return self

    def replace(self, **changes) -> "DataSplits":
        from dataclasses import replace

        return replace(self, **changes)


def first_true(mask: Any) -> Tuple[int, tuple]:
    """``(count, index of the first True)`` of a boolean numpy / torch mask (count 0: index is ``()``)."""
    if isinstance(mask, torch.Tensor):
        count = int(mask.sum())
        flat = int(torch.argmax(mask.reshape(-1).to(torch.uint8))) if count else 0  # argmax: the first maximum
    else:
        count = int(np.count_nonzero(mask))
        flat = int(np.argmax(mask.reshape(-1))) if count else 0
    if not count:
        return 0, ()
    return count, tuple(int(i) for i in np.unravel_index(flat, tuple(mask.shape)))


def _at(name: str, index: tuple) -> str:
    return f"{name}[{', '.join(map(str, index))}]"


def check_finite(values: Any, name: str) -> None:
    """InputError when a float array / tensor holds NaN or inf: names how many and the first index."""
    if isinstance(values, torch.Tensor):
        if not (values.is_floating_point() or values.is_complex()):
            return  # integer / bool features cannot be NaN
        total = complex(values.detach().sum())
        if math.isfinite(total.real) and math.isfinite(total.imag):
            return  # a finite sum means no NaN / inf, and is far faster than isfinite (an overflow: checked below)
        bad, isnan = ~torch.isfinite(values), torch.isnan
    else:
        values = np.asarray(values)
        if not np.issubdtype(values.dtype, np.inexact):
            return
        with np.errstate(over="ignore", invalid="ignore"):
            total = complex(values.sum())
        if math.isfinite(total.real) and math.isfinite(total.imag):
            return
        bad, isnan = ~np.isfinite(values), np.isnan
    count, first = first_true(bad)
    if count:
        nans = int(isnan(values).sum())
        kinds = ", ".join(f"{n} {k}" for n, k in ((nans, "NaN"), (count - nans, "inf")) if n)
        raise InputError(f"{name} holds {count} non-finite value{'s' if count > 1 else ''} ({kinds}); the first is "
                         f"{_at(name.rsplit(' ', 1)[-1], first)} (sample {first[0]}); {CLEAN_HINT}")


def check_labels(values: Any, num_classes: int, name: str) -> None:
    """InputError unless labels are integer class indices in ``0..num_classes-1``: names how many and the first index."""
    y = values if isinstance(values, torch.Tensor) else torch.as_tensor(np.asarray(values))
    short = name.rsplit(" ", 1)[-1]
    if y.dim() != 1:
        raise InputError(f"{name} has shape {tuple(y.shape)}; labels must be a 1-D tensor of class indices (not one-hot)")
    if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
        if y.dtype == torch.bool:
            raise InputError(f"{name} has dtype bool; labels must be integer class indices 0..{num_classes - 1} "
                             "(convert with y.long())")
        whole = torch.isfinite(y) & (y == torch.round(y)) if y.is_floating_point() else torch.zeros_like(y, dtype=torch.bool)
        count, first = first_true(~whole)
        if count:
            raise InputError(f"{name} holds {count} non-integer label{'s' if count > 1 else ''} (dtype {y.dtype}); the "
                             f"first is {_at(short, first)} = {y[first].item()}; encode classes as integers "
                             f"0..{num_classes - 1} and clean or drop the unlabeled samples")
        raise InputError(f"{name} has dtype {y.dtype}; labels must be integer class indices 0..{num_classes - 1}: "
                         "convert them with y.long()")
    out = (y < 0) | (y >= int(num_classes))
    count, first = first_true(out)
    if count:
        raise InputError(f"{name} holds {count} label{'s' if count > 1 else ''} outside 0..{num_classes - 1} "
                         f"(num_classes={num_classes}); the first is {_at(short, first)} = {int(y[first])}; remap the "
                         "labels to 0..K-1 or set num_classes to cover every class")
