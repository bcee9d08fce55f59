"""1-D k-means (Lloyd's algorithm) with the linear initialisation of Deep Compression (Han et al. 2016).

Linear initialisation spaces the ``k`` centroids evenly between the smallest and the largest
weight: the paper found it keeps the few large weights, which matter most, better than density
or random initialisation. In 1-D the nearest-centroid cells are the intervals between the
midpoints of neighbouring centroids, so assignment is a ``searchsorted`` on the sorted weights and
the update a difference of prefix sums. A centroid whose cluster is empty stays where it is.
Everything runs in float64 and is deterministic.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


def linear_init(values: np.ndarray, k: int) -> np.ndarray:
    """``k`` centroids evenly spaced between ``min(values)`` and ``max(values)``."""
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    return np.linspace(float(x.min()), float(x.max()), k)


def kmeans_1d(values: np.ndarray, k: int, *, max_iter: int = 100) -> Tuple[np.ndarray, np.ndarray]:
    """``(centroids, labels)``: ``k`` sorted centroids (fewer if the values have fewer distinct entries) and the
    cluster of every value.

    With at most ``k`` distinct values every value is its own centroid (sharing an already shared
    layer changes nothing). Otherwise Lloyd's iterations run from :func:`linear_init` until the
    assignment stops changing (at most ``max_iter`` updates). A value exactly half-way between two
    centroids goes to the lower one.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    x = np.asarray(values, dtype=np.float64).reshape(-1)
    if x.size == 0:
        return np.zeros(0, dtype=np.float64), np.zeros(0, dtype=np.int64)
    uniq = np.unique(x)
    if uniq.size <= k:
        return uniq, np.searchsorted(uniq, x).astype(np.int64)
    order = np.argsort(x, kind="stable")
    xs = x[order]
    prefix = np.concatenate([[0.0], np.cumsum(xs)])
    c = linear_init(xs, k)
    bounds = _bounds(xs, c)
    for _ in range(max_iter):
        starts, ends = np.concatenate([[0], bounds]), np.concatenate([bounds, [xs.size]])
        counts = ends - starts
        sums = prefix[ends] - prefix[starts]
        c = np.sort(np.where(counts > 0, sums / np.maximum(counts, 1), c))
        new = _bounds(xs, c)
        if np.array_equal(new, bounds):
            break
        bounds = new
    starts, ends = np.concatenate([[0], bounds]), np.concatenate([bounds, [xs.size]])
    labels = np.empty(x.size, dtype=np.int64)
    labels[order] = np.repeat(np.arange(k), ends - starts)
    return c, labels


def _bounds(xs: np.ndarray, c: np.ndarray) -> np.ndarray:
    """Index in the sorted values where each cluster after the first starts (values <= midpoint go lower)."""
    return np.searchsorted(xs, (c[:-1] + c[1:]) / 2.0, side="right")
