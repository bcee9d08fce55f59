"""Linear (in = last dim, out = new ids) and Embedding (out = embedding columns)."""
from __future__ import annotations

from typing import Any

from torch import nn

from ...graph.layout import Layout
from .base import LayerHandler, register_handler


@register_handler("linear")
class LinearHandler(LayerHandler):
    types = (nn.Linear,)

    def propagate(self, p, node, m, name) -> Any:
        lay = p.layout(node.args[0])
        if lay is None:
            p.freeze_value(p.value(node.args[0]), f"{name}: unsupported call")
            return p.untracked_like(node)
        out_ids = p.module_ids(name, "out", m.out_features)
        p.add_member(name, "out", out_ids)
        p.add_member(name, "in", lay.dims[-1])
        return Layout(lay.dims[:-1] + [out_ids])

    def param_slices(self, m, kind):
        if kind == "out":
            return [("weight", 0, None), ("bias", 0, None)]
        if kind == "in":
            return [("weight", 1, None)]
        return []

    def update_attrs(self, m, keep):
        changed = {}
        if "out" in keep:
            m.out_features = changed["out_features"] = len(keep["out"])
        if "in" in keep:
            m.in_features = changed["in_features"] = len(keep["in"])
        return changed


@register_handler("embedding")
class EmbeddingHandler(LayerHandler):
    types = (nn.Embedding,)

    def propagate(self, p, node, m, name) -> Any:
        lay = p.layout(node.args[0])
        p.freeze_value(lay, f"{name}: token ids are not channels")
        out_ids = p.module_ids(name, "out", m.embedding_dim)
        p.add_member(name, "out", out_ids)
        base = lay.dims if lay is not None else [None] * (len(p.shape(node)) - 1)
        return Layout([None] * len(base) + [out_ids])

    def param_slices(self, m, kind):
        return [("weight", 1, None)] if kind == "out" else []

    def update_attrs(self, m, keep):
        m.embedding_dim = len(keep["out"])
        return {"embedding_dim": m.embedding_dim}
