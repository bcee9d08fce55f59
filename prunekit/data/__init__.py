"""Datasets: train/val/test splits from digits, breast_cancer, Fashion-MNIST, NPZ, IDX or a user function. Registry: ``DATASETS``.

``load_data(DataConfig(name="digits"))`` (or ``load_data(name="digits", layout="flat")``)
returns a :class:`DataSplits`. A registered source is ``fn(cfg: DataConfig) -> RawData | DataSplits``;
add yours with ``@register_dataset("name")``.
"""
from __future__ import annotations

from typing import Any, Callable, Optional, Union

from ..errors import ConfigError
from ..registry import Registry
from .arrays import RawData
from .base import DataSplits
from .config import DataConfig
from .idx import read_idx, write_idx

DATASETS: Registry[Callable[[DataConfig], Any]] = Registry("dataset")


def register_dataset(name: Optional[str] = None, **kw: Any):
    return DATASETS.register(name, **kw)


def load_data(cfg: Union[DataConfig, dict, None] = None, **overrides: Any) -> DataSplits:
    """Load, split, subset, shape and normalise a dataset as ``cfg`` (a DataConfig or recipe dict) says.

    Raises :class:`~prunekit.errors.InputError` when a split holds NaN / inf features or labels that are not
    integers in ``0..num_classes-1`` (the message names the split, how many values and the first index).
    """
    from ..typed import from_dict
    from .prepare import prepare
    from .sources import as_raw, from_function

    if cfg is None or isinstance(cfg, dict):
        cfg = from_dict(DataConfig, {**(cfg or {}), **overrides}, "data")
    elif overrides:
        from dataclasses import replace

        cfg = replace(cfg, **overrides)
    if not isinstance(cfg, DataConfig):
        raise ConfigError(f"load_data needs a DataConfig or a dict, got {type(cfg).__name__}")
    cfg.validate()
    if ":" in cfg.name:
        raw = from_function(cfg)
    else:
        raw = as_raw(DATASETS.get(cfg.name)(cfg), f"dataset {cfg.name!r}")
    data = raw if isinstance(raw, DataSplits) else prepare(raw, cfg, name=cfg.name)
    return data.validate(where=f"dataset {cfg.name!r}")  # NaN / inf features or bad labels fail here, before any stage


# built-in sources register themselves on import
from . import sources  # noqa: E402,F401

__all__ = ["DATASETS", "DataConfig", "DataSplits", "RawData", "load_data", "read_idx", "register_dataset", "write_idx"]
