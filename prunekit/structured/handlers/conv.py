"""Convolutions (1/2/3-d, transposed, grouped, depthwise): output channels are new ids; grouped ones couple in and out."""
from __future__ import annotations

from typing import Any, Dict

import numpy as np
import torch
from torch import nn

from ...graph.layout import Layout
from .base import LayerHandler, channel_dim, register_handler, slice_tensor


def _kind(m) -> str:
    """'dense', 'depthwise' (one input per group), 'grouped' (equal in/out per group) or 'other'."""
    g = m.groups
    if g == 1:
        return "dense"
    a, b = m.in_channels // g, m.out_channels // g
    if getattr(m, "transposed", False):
        return "other"
    if a == 1:
        return "depthwise"
    return "grouped" if a == b else "other"


@register_handler("conv")
class ConvHandler(LayerHandler):
    types = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

    def propagate(self, p, node, m, name) -> Any:
        lay, out_shape = p.layout(node.args[0]), p.shape(node)
        if lay is None or out_shape is None:
            p.freeze_value(p.value(node.args[0]), f"{name}: unsupported call")
            return p.untracked_like(node)
        cdim = channel_dim(lay.ndim, len(m.kernel_size))
        for d, ids in enumerate(lay.dims):
            if d != cdim and ids is not None:
                p.ids.freeze(ids, f"{name} convolves over a channel dim")
        in_ids, kind = lay.dims[cdim], _kind(m)
        if kind == "dense":
            out_ids = p.module_ids(name, "out", m.out_channels)
        elif kind in ("depthwise", "grouped") and in_ids is not None:
            out_ids = np.repeat(in_ids, m.out_channels // m.in_channels) if kind == "depthwise" else in_ids.copy()
            if kind == "grouped":
                p.result.divisions.append(in_ids.reshape(m.groups, -1))
        else:
            out_ids = p.module_ids(name, "out", m.out_channels)
            reason = f"{name}: grouped convolution ({m.groups} groups, {m.in_channels}->{m.out_channels}) is kept whole"
            p.ids.freeze(out_ids, reason)
            p.ids.freeze(in_ids, reason)
        p.add_member(name, "out", out_ids)
        p.add_member(name, "in", in_ids)
        dims = [None] * len(out_shape)
        dims[cdim] = out_ids
        return Layout(dims)

    def param_slices(self, m, kind):
        t = 1 if getattr(m, "transposed", False) else 0
        if kind == "out":
            return [("weight", t, None), ("bias", 0, None)]
        if kind == "in" and m.groups == 1:
            return [("weight", 1 - t, None)]
        return []

    def prune(self, m, keep) -> Dict[str, Any]:
        kind, changed = _kind(m), {}
        out, inn = keep.get("out"), keep.get("in")
        if kind == "grouped" and inn is not None:
            _prune_grouped_in(m, np.asarray(inn), None if out is None else np.asarray(out))
        for path, dim, _ in self.param_slices(m, "out") if out is not None else []:
            slice_tensor(m, path, dim, out)
        if kind == "dense" and inn is not None:
            slice_tensor(m, "weight", 1 - int(getattr(m, "transposed", False)), inn)
        if out is not None:
            m.out_channels = changed["out_channels"] = len(out)
        if inn is not None:
            m.in_channels = changed["in_channels"] = len(inn)
            if kind == "depthwise":
                m.groups = changed["groups"] = len(inn)
        return changed


def _prune_grouped_in(m, inn: np.ndarray, out) -> None:
    """Each output channel keeps the kept input channels of its own group (all groups keep the same count)."""
    g, per = m.groups, m.in_channels // m.groups
    kept_per_group = [inn[(inn >= k * per) & (inn < (k + 1) * per)] - k * per for k in range(g)]
    n = len(kept_per_group[0])
    rel = np.stack([np.pad(r, (0, n - len(r))) if len(r) <= n else r[:n] for r in kept_per_group])
    group_of_out = np.arange(m.out_channels) // (m.out_channels // g)
    index = torch.as_tensor(rel[group_of_out], dtype=torch.long)
    w = m.weight.detach()
    index = index.view(index.shape + (1,) * (w.dim() - 2)).expand(-1, -1, *w.shape[2:])
    m.weight = nn.Parameter(torch.gather(w, 1, index).clone(), requires_grad=m.weight.requires_grad)
