"""RawData -> DataSplits: stratified carving of missing splits, subsets, layout, normalisation fit on train only."""
from __future__ import annotations

import logging
import math
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from ..errors import ConfigError, InputError
from .arrays import RawData
from .base import DataSplits
from .config import DataConfig

log = logging.getLogger(__name__)
Pair = Tuple[np.ndarray, np.ndarray]


def prepare(raw: RawData, cfg: DataConfig, name: Optional[str] = None) -> DataSplits:
    parts = carve_splits(raw, cfg)
    for split in ("train", "val", "test"):
        cap = getattr(cfg, f"{split}_subset")
        if cap is not None:
            parts[split] = stratified_subset(*parts[split], cap, cfg.seed)
    parts = {s: (to_layout(x, cfg.layout, raw.image, raw.source), y) for s, (x, y) in parts.items()}
    shift, scale, stats = fit_normalizer(parts["train"][0], cfg.normalize)
    tensors = {}
    for split, (x, y) in parts.items():
        x = (x.astype(np.float32) - shift.astype(np.float32)) / scale.astype(np.float32)  # float32 keeps 60k images small
        tensors[f"x_{split}"] = torch.from_numpy(np.ascontiguousarray(x))
        tensors[f"y_{split}"] = torch.from_numpy(y.astype(np.int64))
    num_classes = int(max(int(y.max()) for _, y in parts.values() if len(y)) + 1)
    if raw.class_names is not None and len(raw.class_names) >= num_classes:
        num_classes = len(raw.class_names)
    ndim = tensors["x_train"].dim()
    layout = {2: "flat", 4: "image"}.get(ndim, f"{ndim - 1}-d samples")
    info = {"source": raw.source, "layout": layout, "normalization": stats, **raw.info}
    caps = {s: getattr(cfg, f"{s}_subset") for s in ("train", "val", "test") if getattr(cfg, f"{s}_subset") is not None}
    if caps:
        info["subset"] = caps
    return DataSplits(**tensors, num_classes=num_classes, name=name or cfg.name, class_names=raw.class_names, info=info)


def carve_splits(raw: RawData, cfg: DataConfig) -> Dict[str, Pair]:
    """Take the source's own splits; carve a missing test split, then a missing val split, out of train (stratified).

    Sizes are rounded sample counts: ``round(test_fraction * N)`` and ``round(val_fraction * N)`` of all
    N samples, or ``round(val_fraction * N_train)`` when the source brings its own test split.
    """
    parts = dict(raw.pairs())
    x, y = parts["train"]
    pool = len(y)
    if "test" not in parts:
        keep, out = stratified_indices(y, held_out_count(cfg.test_fraction, pool, "test"), cfg.seed)
        parts["test"] = (x[out], y[out])
        x, y = x[keep], y[keep]
    if "val" not in parts:
        keep, out = stratified_indices(y, held_out_count(cfg.val_fraction, pool, "val", left=len(y)), cfg.seed + 1)
        parts["val"] = (x[out], y[out])
        x, y = x[keep], y[keep]
    parts["train"] = (x, y)
    return {s: parts[s] for s in ("train", "val", "test")}


def held_out_count(fraction: float, pool: int, split: str, left: Optional[int] = None) -> int:
    left = pool if left is None else left
    count = max(1, int(round(fraction * pool)))
    if count >= left:
        raise InputError(
            f"only {left} training samples are left, too few to carve a {split} split of {count}; "
            f"provide more data or x_{split}/y_{split} arrays"
        )
    return count


def stratified_indices(y: np.ndarray, held_out: float | int, seed: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(kept, held_out)`` indices with class proportions preserved; unstratified (logged) when a class is too small."""
    from sklearn.model_selection import train_test_split  # heavy: only when a split is carved

    idx = np.arange(len(y))
    try:
        return tuple(train_test_split(idx, test_size=held_out, stratify=y, random_state=seed))
    except ValueError as exc:
        log.warning("stratified split impossible (%s); splitting without stratification", exc)
        return tuple(train_test_split(idx, test_size=held_out, random_state=seed))


def stratified_subset(x: np.ndarray, y: np.ndarray, cap: int, seed: int) -> Pair:
    """At most ``cap`` samples, class proportions preserved."""
    if cap >= len(y):
        return x, y
    _, keep = stratified_indices(y, cap, seed)
    return x[keep], y[keep]


def to_layout(x: np.ndarray, layout: str, image_source: bool, source: str) -> np.ndarray:
    """flat: N x D. image: N x C x H x W (N x H x W gains C=1; square N x D becomes 1 x s x s). auto: the source's shape."""
    if layout == "flat":
        return x.reshape(len(x), -1)
    if layout == "auto":
        return x[:, None] if image_source and x.ndim == 3 else x
    if x.ndim == 4:
        return x
    if x.ndim == 3:
        return x[:, None]
    side = math.isqrt(x.shape[1]) if x.ndim == 2 else -1
    if x.ndim == 2 and side * side == x.shape[1]:
        return x.reshape(len(x), 1, side, side)
    raise ConfigError(
        f"data.layout: image cannot shape samples of {x.shape[1:]} from {source} into C x H x W; "
        "use layout: flat (or auto) for feature vectors"
    )


def fit_normalizer(x_train: np.ndarray, kind: str) -> Tuple[np.ndarray, np.ndarray, dict]:
    """``(shift, scale, stats)`` from the training split only.

    standard: per feature for N x D data, per channel (axis 1) for N x C x ... data; a zero std becomes 1.
    unit: one scale, the largest absolute training value. none: identity.
    """
    x = x_train
    if kind == "none":
        return np.zeros(1), np.ones(1), {"kind": "none"}
    if kind == "unit":
        peak = max(abs(float(x.max())), abs(float(x.min()))) if x.size else 0.0  # no float copy, no int8 abs overflow
        scale = peak if peak > 0 else 1.0
        return np.zeros(1), np.full(1, scale), {"kind": "unit", "scale": scale}
    if kind != "standard":
        raise ConfigError(f"data.normalize = {kind!r}; choose 'standard', 'unit' or 'none'")
    axes = (0,) if x.ndim == 2 else (0,) + tuple(range(2, x.ndim))
    mean = x.mean(axis=axes, dtype=np.float64, keepdims=True)
    std = x.std(axis=axes, dtype=np.float64, keepdims=True)
    std = np.where(std > 0, std, 1.0)
    per = "feature" if x.ndim == 2 else "channel"
    return mean, std, {"kind": "standard", "per": per, "mean": mean.ravel().tolist(), "std": std.ravel().tolist()}
