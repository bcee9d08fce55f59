"""DataConfig: the recipe's ``data:`` section (which dataset, how to split, subset, shape and normalise it)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, Literal, Optional

from ..errors import ConfigError


@dataclass
class DataConfig:
    """Which data to load and how to prepare it.

    ``name`` is a registered dataset (``digits``, ``breast_cancer``, ``fashion_mnist``,
    ``npz``, ``idx``) or ``"package.module:function"`` returning a DataSplits, a dict of
    arrays (``x_train``, ``y_train``, optional ``x_val``/``y_val``/``x_test``/``y_test``) or ``(x, y)``.
    Fractions: with one pool of samples, ``test_fraction`` and ``val_fraction`` are shares of
    all samples (70/15/15 by default); when the source has its own test split, ``val_fraction``
    is the share of the training samples carved out for validation.
    """

    name: str = "digits"  # registered dataset name or "package.module:function"
    path: Optional[str] = None  # npz file, IDX folder, or fashion-mnist folder (default /usr/share/datasets/fashion-mnist/)
    files: Optional[Dict[str, str]] = None  # idx only: explicit {"x_train": file, "y_train": file, "x_test": ..., "y_test": ...}
    kwargs: Dict[str, Any] = field(default_factory=dict)  # keyword arguments for a "module:function" dataset (user loaders read them too)
    val_fraction: float = 0.15  # share carved out (stratified) for validation
    test_fraction: float = 0.15  # share carved out (stratified) for testing when the source has no test split
    seed: int = 0  # seed of the stratified splits and subsets
    train_subset: Optional[int] = None  # keep at most this many training samples (stratified); None = all
    val_subset: Optional[int] = None  # same cap for the validation split
    test_subset: Optional[int] = None  # same cap for the test split
    layout: Literal["auto", "image", "flat"] = "auto"  # image: N x C x H x W; flat: N x D; auto: the source's own shape
    normalize: Literal["standard", "unit", "none"] = "standard"  # standard: (x-mean)/std fit on train; unit: x / max|x_train|

    def validate(self) -> None:
        if not isinstance(self.name, str) or not self.name:
            raise ConfigError("data.name must be a dataset name such as 'digits' or 'package.module:function'")
        for key in ("val_fraction", "test_fraction"):
            value = getattr(self, key)
            if not 0.0 < value < 1.0:
                raise ConfigError(f"data.{key} = {value!r} must be strictly between 0 and 1 (e.g. 0.15)")
        if self.val_fraction + self.test_fraction >= 1.0:
            raise ConfigError(
                f"data.val_fraction + data.test_fraction = {self.val_fraction + self.test_fraction:g} leaves no "
                "training samples; make their sum smaller than 1"
            )
        for key in ("train_subset", "val_subset", "test_subset"):
            value = getattr(self, key)
            if value is not None and value < 1:
                raise ConfigError(f"data.{key} = {value!r} must be a positive number of samples or null (all)")
        if self.files is not None and self.name != "idx":
            raise ConfigError(f"data.files is only used by name: idx (got name: {self.name!r}); use data.path instead")
