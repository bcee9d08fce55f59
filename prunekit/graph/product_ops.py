"""Channel rules for products: matmul / bmm and scaled-dot-product attention (heads, masks, batch dims)."""
from __future__ import annotations

import operator
from typing import Any, List, Optional

import numpy as np
import torch
import torch.nn.functional as F
import torch.fx as fx

from .layout import Layout
from .ops import register_op


# ---- products ---------------------------------------------------------------------------
@register_op(torch.matmul, operator.matmul, torch.bmm, torch.mm, "matmul", "bmm", "mm")
def matmul(p, node: fx.Node) -> Any:
    a, b = node.args[0], node.args[1]
    la, lb = p.value(a), p.value(b)
    if la is None or lb is None or la.ndim < 2 or lb.ndim < 2:
        p.freeze_value([la, lb], f"matmul with a 1-D or non-traced operand ({node.name})")
        return p.untracked_like(node)
    ka, kb = la.dims[-1], lb.dims[-2]
    if ka is not None and kb is not None:
        p.ids.union(ka, kb)  # contracted channels: a zero column of a meets a zero row of b
    elif (ka is None) != (kb is None):
        p.ids.freeze(ka if ka is not None else kb, f"contracted against an untracked dim in {node.name}")
    nd = len(p.shape(node))
    batch = _broadcast_batch(p, node, [(a, la), (b, lb)], nd - 2)
    return Layout(batch + [la.dims[-2], lb.dims[-1]])


def _broadcast_batch(p, node, operands, nb: int) -> List[Optional[np.ndarray]]:
    out_shape = p.shape(node)
    dims = []
    for d in range(nb):
        tracked, plain = [], False
        for a, lay in operands:
            k = d - (nb - (lay.ndim - 2))
            if k < 0:
                continue
            if lay.dims[k] is not None and p.shape(a)[k] == out_shape[d]:
                tracked.append(lay.dims[k])
            elif lay.dims[k] is None and p.shape(a)[k] == out_shape[d] and out_shape[d] > 1:
                plain = True
        for t in tracked[1:]:
            p.ids.union(tracked[0], t)
        if tracked and plain:
            p.ids.freeze(tracked[0], f"batched against an untracked dim in {node.name}")
        dims.append(tracked[0] if tracked else None)
    return dims


@register_op(F.scaled_dot_product_attention)
def sdpa(p, node: fx.Node) -> Any:
    q, k, v = (node.args + (None,) * 3)[:3]
    q = node.kwargs.get("query", q)
    k = node.kwargs.get("key", k)
    v = node.kwargs.get("value", v)
    lq, lk, lv = p.value(q), p.value(k), p.value(v)
    if any(x is None for x in (lq, lk, lv)):
        p.freeze_value([lq, lk, lv], f"attention with a non-traced operand ({node.name})")
        return p.untracked_like(node)
    if lq.dims[-1] is not None and lk.dims[-1] is not None:
        p.ids.union(lq.dims[-1], lk.dims[-1])
    else:
        p.freeze_value([Layout([lq.dims[-1], lk.dims[-1]])], f"query/key head dim in {node.name}")
    p.freeze_value([Layout([lq.dims[-2], lk.dims[-2], lv.dims[-2]])], f"attention sequence dim in {node.name}")
    operands = [(q, lq), (k, lk), (v, lv)]
    mask = node.args[3] if len(node.args) > 3 else node.kwargs.get("attn_mask")
    if isinstance(mask, fx.Node) and p.shape(mask) is not None and len(p.shape(mask)) >= 2:
        # a float mask is added to the scores: a per-head bias in it (T5's and Swin's relative position bias)
        # shares the heads' channels, so heads and bias are removed together
        lm = p.value(mask) or Layout([None] * len(p.shape(mask)))
        p.freeze_value([Layout(list(lm.dims[-2:]))], f"attention mask's sequence dims in {node.name}")
        if len(p.shape(mask)) > 2:
            operands.append((mask, Layout(list(lm.dims[:-2]) + [None, None])))
    batch = _broadcast_batch(p, node, operands, lq.ndim - 2)
    return Layout(batch + [None, lv.dims[-1]])
