"""Layouts: for each dimension of a traced tensor, the channel id of every position (None = not a channel dim)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Sequence

import numpy as np


@dataclass
class Layout:
    """Per-dimension channel ids of one tensor value; ``dims[d]`` is None for batch/spatial/untracked dims."""

    dims: List[Optional[np.ndarray]]

    @property
    def ndim(self) -> int:
        return len(self.dims)

    def tracked(self) -> List[int]:
        return [d for d, ids in enumerate(self.dims) if ids is not None]

    def any_tracked(self) -> bool:
        return any(ids is not None for ids in self.dims)

    def with_dim(self, d: int, ids: Optional[np.ndarray]) -> "Layout":
        dims = list(self.dims)
        dims[d] = ids
        return Layout(dims)


def untracked(ndim: int) -> Layout:
    return Layout([None] * ndim)


def norm_dim(d: int, ndim: int) -> int:
    return d + ndim if d < 0 else d


def iter_layouts(value) -> Sequence[Layout]:
    """Every Layout inside a (possibly nested tuple/list/dict) propagated value."""
    if isinstance(value, Layout):
        return [value]
    if isinstance(value, (tuple, list)):
        return [lay for v in value for lay in iter_layouts(v)]
    if isinstance(value, dict):
        return [lay for v in value.values() for lay in iter_layouts(v)]
    return []
