"""Built-in dataset sources: sklearn digits / breast_cancer, Fashion-MNIST, IDX files, NPZ archives, user functions."""
from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, InputError
from .arrays import RawData, check, from_arrays
from .base import DataSplits
from .config import DataConfig
from .idx import find_idx_files, read_idx
from . import register_dataset

FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist/"  # Debian package dataset-fashion-mnist
FASHION_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]


@register_dataset("digits")
def digits(cfg: DataConfig) -> RawData:
    """scikit-learn's bundled 1,797 8x8 handwritten digits (pixel values 0..16)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    return check(RawData(bunch.images, bunch.target, source="sklearn.datasets.load_digits", image=True,
                         class_names=[str(c) for c in bunch.target_names]))


@register_dataset("breast_cancer")
def breast_cancer(cfg: DataConfig) -> RawData:
    """scikit-learn's bundled Wisconsin breast cancer table: 569 samples x 30 features, 2 classes."""
    from sklearn.datasets import load_breast_cancer

    bunch = load_breast_cancer()
    return check(RawData(bunch.data, bunch.target, source="sklearn.datasets.load_breast_cancer",
                         class_names=[str(c) for c in bunch.target_names]))


@register_dataset("idx")
def idx(cfg: DataConfig) -> RawData:
    """IDX files: ``data.files`` naming x_train/y_train[/x_test/y_test], or the standard names in folder ``data.path``."""
    if cfg.files:
        unknown = sorted(set(cfg.files) - {"x_train", "y_train", "x_val", "y_val", "x_test", "y_test"})
        if unknown:
            raise ConfigError(f"data.files has unknown key {unknown[0]!r}; use x_train, y_train, x_val, y_val, x_test, y_test")
        base = Path(cfg.path) if cfg.path else Path(".")
        files = {k: base / v for k, v in cfg.files.items()}
    elif cfg.path:
        files = find_idx_files(cfg.path)
    else:
        raise ConfigError("data.name: idx needs data.path (a folder with *-idx*-ubyte[.gz] files) or data.files")
    return load_idx_files(files, source=str(cfg.path or files["x_train"]))


@register_dataset("fashion_mnist")
def fashion_mnist(cfg: DataConfig) -> RawData:
    """Zalando's Fashion-MNIST: 60,000 train + 10,000 test 28x28 grayscale images, 10 classes (official split)."""
    folder = Path(cfg.path or FASHION_MNIST_DIR)
    if not folder.is_dir():
        raise InputError(
            f"Fashion-MNIST folder {str(folder)!r} does not exist; install it with "
            "`apt-get install dataset-fashion-mnist` or set data.path to a folder holding the four *-ubyte.gz files"
        )
    raw = load_idx_files(find_idx_files(folder), source=str(folder))
    raw.class_names = list(FASHION_CLASSES)
    return raw


def load_idx_files(files: dict, source: str) -> RawData:
    arrays = {key: read_idx(path) for key, path in files.items()}
    raw = from_arrays(arrays, source=f"IDX files in {source}", image=arrays["x_train"].ndim == 3)
    raw.info["files"] = {k: str(v) for k, v in files.items()}
    return raw


@register_dataset("npz")
def npz(cfg: DataConfig) -> RawData:
    """A NumPy ``.npz`` with x_train, y_train and optional x_val/y_val, x_test/y_test (never unpickled)."""
    if not cfg.path:
        raise ConfigError("data.name: npz needs data.path, the .npz file with x_train and y_train arrays")
    path = Path(cfg.path)
    if not path.is_file():
        raise InputError(f"npz file {str(path)!r} does not exist; check data.path")
    try:
        with np.load(path, allow_pickle=False) as archive:
            arrays = {k: archive[k] for k in archive.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise InputError(
            f"npz file {str(path)!r} cannot be read ({exc}); save it with np.savez(path, x_train=..., y_train=...) "
            "using numeric arrays (object arrays are refused: they would need unpickling)"
        ) from exc
    class_names = [str(c) for c in arrays.pop("class_names")] if "class_names" in arrays else None
    return from_arrays(arrays, source=f"npz file {str(path)!r}", class_names=class_names)


def from_function(cfg: DataConfig) -> Any:
    """Call ``"package.module:function"`` with ``data.kwargs``; returns DataSplits, or RawData built from its result."""
    from ..models import import_object

    fn = import_object(cfg.name)
    if not callable(fn):
        raise ConfigError(f"data.name {cfg.name!r} is not a function")
    result = fn(**cfg.kwargs)
    return as_raw(result, f"data function {cfg.name!r}")


def as_raw(result: Any, source: str) -> RawData | DataSplits:
    """Accept DataSplits (as is), RawData, a dict of npz-style arrays, or an ``(x, y)`` pair."""
    if isinstance(result, (DataSplits, RawData)):
        return result if isinstance(result, DataSplits) else check(result)
    if isinstance(result, dict):
        arrays = dict(result)
        names = arrays.pop("class_names", None)
        return from_arrays({k: _numpy(v) for k, v in arrays.items()}, source=source,
                           class_names=list(map(str, names)) if names is not None else None)
    if isinstance(result, (tuple, list)) and len(result) == 2:
        return from_arrays({"x_train": _numpy(result[0]), "y_train": _numpy(result[1])}, source=source)
    raise InputError(
        f"{source} returned {type(result).__name__}; return a DataSplits, a dict with x_train/y_train "
        "(optionally x_val/y_val/x_test/y_test), or an (x, y) pair"
    )


def _numpy(value: Any) -> np.ndarray:
    if hasattr(value, "detach"):  # a torch tensor
        return value.detach().cpu().numpy()
    return np.asarray(value)
