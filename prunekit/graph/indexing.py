"""Tensor indexing rule (``x[:, 0]``, ``x[..., :k]``): full slices keep channel ids, anything else on a channel dim freezes it."""
from __future__ import annotations

from typing import Any, List, Optional

import numpy as np
import torch.fx as fx

from .layout import Layout


def index_rule(p, node: fx.Node) -> Any:
    lay = p.value(node.args[0])
    idx = node.args[1]
    idx = idx if isinstance(idx, tuple) else (idx,)
    out_shape = p.shape(node)
    if out_shape is None or any(isinstance(i, fx.Node) for i in idx):
        p.freeze_value(lay, f"indexed by a tensor/computed index ({node.name})")
        return p.untracked_like(node)
    n_real = sum(1 for i in idx if i is not None and i is not Ellipsis)
    expanded: List[Any] = []
    for i in idx:
        if i is Ellipsis:
            expanded.extend([slice(None)] * (lay.ndim - n_real))
        else:
            expanded.append(i)
    expanded.extend([slice(None)] * (lay.ndim - sum(1 for i in expanded if i is not None)))
    dims: List[Optional[np.ndarray]] = []
    d = 0
    for i in expanded:
        if i is None:
            dims.append(None)
            continue
        ids = lay.dims[d]
        if isinstance(i, slice) and i == slice(None):
            dims.append(ids)
        elif isinstance(i, slice):
            p.ids.freeze(ids, f"sliced along a channel dim ({node.name})")
            dims.append(None)
        else:  # an int drops the dim
            p.ids.freeze(ids, f"indexed along a channel dim ({node.name})")
        d += 1
    if len(dims) != len(out_shape):
        p.freeze_value(lay, f"unsupported indexing ({node.name})")
        return p.untracked_like(node)
    return Layout(dims)
