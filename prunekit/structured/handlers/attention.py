"""nn.MultiheadAttention: embed channels couple input, q/k/v rows and output; heads are removed whole."""
from __future__ import annotations

from typing import Any

import numpy as np
from torch import nn

from ...graph.layout import Layout
from .base import LayerHandler, register_handler


@register_handler("multihead_attention")
class MultiheadAttentionHandler(LayerHandler):
    """Removing one atom drops a whole head: its q, k, v rows, its out_proj columns, and (since nn.MultiheadAttention
    needs num_heads * head_dim == embed_dim) the matching embed channels of the input and output."""

    types = (nn.MultiheadAttention,)

    def propagate(self, p, node, m, name) -> Any:
        args = list(node.args) + [None] * 3
        q = node.kwargs.get("query", args[0])
        k = node.kwargs.get("key", args[1])
        v = node.kwargs.get("value", args[2])
        lays = [p.layout(a) for a in (q, k, v)]
        ids = p.module_ids(name, "embed", m.embed_dim)
        if not m._qkv_same_embed_dim or any(lay is None or lay.dims[-1] is None for lay in lays):
            p.ids.freeze(ids, f"{name}: separate kdim/vdim or untracked inputs; attention is kept whole")
        for lay in lays:
            if lay is not None and lay.dims[-1] is not None:
                p.ids.union(ids, lay.dims[-1])
        for lay in lays:
            if lay is not None:
                p.freeze_all(lay.dims[:-1], f"{name} attends over this dim")
        p.ids.union_blocks(ids, m.head_dim)
        p.add_member(name, "embed", ids)
        out = Layout([None] * (lays[0].ndim - 1) + [ids]) if lays[0] is not None else None
        rest = p.untracked_like(node)
        return (out,) + tuple(rest[1:]) if isinstance(rest, tuple) else (out, None)

    def param_slices(self, m, kind):
        if kind != "embed":
            return []
        e = m.embed_dim
        qkv = np.stack([np.arange(e), np.arange(e) + e, np.arange(e) + 2 * e], axis=1)
        return [
            ("in_proj_weight", 0, qkv), ("in_proj_weight", 1, None), ("in_proj_bias", 0, qkv),
            ("out_proj.weight", 0, None), ("out_proj.weight", 1, None), ("out_proj.bias", 0, None),
            ("bias_k", 2, None), ("bias_v", 2, None),
        ]

    def prune(self, m, keep):
        positions = keep["embed"]
        # all slices index the original embed_dim, so compute them before any attribute changes
        for path, dim, imap in self.param_slices(m, "embed"):
            from .base import positions_to_indices, slice_tensor

            slice_tensor(m, path, dim, positions_to_indices(positions, imap))
        e = len(positions)
        m.num_heads = e // m.head_dim
        m.embed_dim = m.kdim = m.vdim = e
        m.out_proj.in_features = m.out_proj.out_features = e
        return {"embed_dim": e, "kdim": e, "vdim": e, "num_heads": m.num_heads, "out_proj.in_features": e,
                "out_proj.out_features": e}
