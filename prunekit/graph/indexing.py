"""Tensor indexing rule (``x[:, 0]``, ``x[..., :k]``): full slices keep channel ids, anything else on a channel dim freezes it."""
from __future__ import annotations

from typing import Any, List, Optional

import numpy as np
import torch
import torch.fx as fx

from .layout import Layout


def index_rule(p, node: fx.Node) -> Any:
    lay = p.value(node.args[0])
    idx = node.args[1]
    idx = idx if isinstance(idx, tuple) else (idx,)
    out_shape = p.shape(node)
    tensors = [k for k, i in enumerate(idx) if isinstance(i, fx.Node)]
    if out_shape is not None and len(tensors) == 1 and lay is not None \
            and all(i == slice(None) for i in idx[:tensors[0]]) \
            and all(i == slice(None) or i is Ellipsis for i in idx[tensors[0] + 1:]):
        return gather_rule(p, node, lay, tensors[0], idx[tensors[0]])  # table[index], x[:, index]
    if out_shape is None or tensors:
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


def gather_rule(p, node: fx.Node, lay: Layout, k: int, index: fx.Node) -> Any:
    """``x[..., index, ...]`` with one integer index tensor at dim ``k`` (Swin's relative-position bias:
    ``table[relative_position_index]``): dim ``k`` is replaced by the index's dims, the other dims keep their
    channels. A channel dim gathered from is frozen (the pruned model gathers the same positions from a smaller
    dim); the gathered dims are untracked. An index that is not an integer tensor (a boolean mask), or that
    carries channels itself, freezes everything, as before."""
    meta = index.meta.get("tensor_meta")
    out_shape, index_shape = p.shape(node), p.shape(index)
    index_lay = p.value(index)
    integer = getattr(meta, "dtype", None) in (torch.int64, torch.int32, torch.int16, torch.int8)  # not a mask
    if not integer or index_shape is None or (isinstance(index_lay, Layout) and index_lay.any_tracked()) \
            or k >= lay.ndim or len(out_shape) != lay.ndim - 1 + len(index_shape):
        p.freeze_value([lay, index_lay], f"indexed by a tensor/computed index ({node.name})")
        return p.untracked_like(node)
    p.ids.freeze(lay.dims[k], f"gathered along a channel dim by an index tensor ({node.name})")
    return Layout(list(lay.dims[:k]) + [None] * len(index_shape) + list(lay.dims[k + 1:]))
