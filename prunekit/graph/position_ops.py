"""Channel rules for ops that move positions along a dim: roll, flip, index_select (gathers by index tensors
are in :mod:`~prunekit.graph.indexing`)."""
from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.fx as fx

from .indexing import gather_rule
from .layout import Layout, norm_dim
from .ops import _dim_arg, register_op


@register_op(torch.roll, "roll")
def roll(p, node: fx.Node) -> Any:
    """``torch.roll`` shifts positions cyclically along ``dims`` (Swin's shifted windows roll the two spatial
    dims): the other dims keep their channels. A rolled channel dim is frozen: the pruned model rolls its smaller
    dim by the same shift, which is not the permutation of the kept channels. No ``dims``: the flattened tensor
    rolls, mixing every dim, so every channel dim is frozen."""
    lay = p.value(node.args[0])
    shifts = node.kwargs.get("shifts", node.args[1] if len(node.args) > 1 else None)
    dims = node.kwargs.get("dims", node.args[2] if len(node.args) > 2 else None)
    dims = [] if dims is None else list(dims) if isinstance(dims, (tuple, list)) else [dims]
    if not dims or not all(isinstance(d, int) for d in dims):
        p.freeze_value(lay, f"`roll` over the flattened tensor or unknown dims ({node.name})")
        return lay
    shifts = list(shifts) if isinstance(shifts, (tuple, list)) else [shifts] * len(dims)
    out = list(lay.dims)
    for d, shift in zip(dims, shifts):
        d = norm_dim(d, lay.ndim)
        if out[d] is None:
            continue
        p.ids.freeze(out[d], f"`roll` shifts along a channel dim ({node.name})")
        if isinstance(shift, int):  # the positions' channels after the shift (frozen, but unions stay true)
            out[d] = np.roll(out[d], shift)
    return Layout(out)


@register_op(torch.flip, "flip")
def flip(p, node: fx.Node) -> Any:
    """``torch.flip`` reverses the positions along ``dims``. Along a channel dim that is exact: the pruned model
    reverses its kept channels, which are the kept positions of the reversed tensor, so the ids reverse too."""
    lay = p.value(node.args[0])
    dims = node.kwargs.get("dims", node.args[1] if len(node.args) > 1 else None)
    dims = list(dims) if isinstance(dims, (tuple, list)) else [dims]
    if not all(isinstance(d, int) for d in dims):
        p.freeze_value(lay, f"`flip` over unknown dims ({node.name})")
        return lay
    out = list(lay.dims)
    for d in dims:
        d = norm_dim(d, lay.ndim)
        out[d] = None if out[d] is None else out[d][::-1].copy()
    return Layout(out)


@register_op(torch.index_select, "index_select")
def index_select(p, node: fx.Node) -> Any:
    """``index_select(x, dim, index)``: a gather along ``dim`` (frozen if it is a channel dim); see
    :func:`~prunekit.graph.indexing.gather_rule`."""
    lay = p.value(node.args[0])
    d = norm_dim(_dim_arg(node, 1), lay.ndim)
    index = node.kwargs.get("index", node.args[2] if len(node.args) > 2 else None)
    if not isinstance(index, fx.Node) or p.shape(index) is None or len(p.shape(index)) != 1:
        p.freeze_value(lay, f"`index_select` with an index that is not a 1-D tensor ({node.name})")
        return p.untracked_like(node)
    return gather_rule(p, node, lay, d, index)
