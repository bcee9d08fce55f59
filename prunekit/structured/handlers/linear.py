"""Linear (in = last dim, out = new ids), Hugging Face's Conv1D (a Linear with a transposed weight) and Embedding
(out = embedding columns)."""
from __future__ import annotations

from typing import Any

from torch import nn

from ...graph.export_capture import is_transposed_linear
from ...graph.layout import Layout
from .base import LayerHandler, register_handler


@register_handler("linear")
class LinearHandler(LayerHandler):
    types = (nn.Linear,)
    weight_dims = {"out": 0, "in": 1}  # the weight's dim holding each axis

    def out_size(self, m) -> int:
        return m.out_features

    def propagate(self, p, node, m, name) -> Any:
        lay = p.layout(node.args[0])
        if lay is None:
            p.freeze_value(p.value(node.args[0]), f"{name}: unsupported call")
            return p.untracked_like(node)
        out_ids = p.module_ids(name, "out", self.out_size(m))
        p.add_member(name, "out", out_ids)
        p.add_member(name, "in", lay.dims[-1])
        return Layout(lay.dims[:-1] + [out_ids])

    def param_slices(self, m, kind):
        if kind not in self.weight_dims:
            return []
        return [("weight", self.weight_dims[kind], None)] + ([("bias", 0, None)] if kind == "out" else [])

    def update_attrs(self, m, keep):
        changed = {}
        if "out" in keep:
            m.out_features = changed["out_features"] = len(keep["out"])
        if "in" in keep:
            m.in_features = changed["in_features"] = len(keep["in"])
        return changed


@register_handler("transposed_linear")
class TransposedLinearHandler(LinearHandler):
    """Hugging Face's ``Conv1D`` (GPT-2's attention and MLP layers): ``y = x @ W + b`` with ``W`` of shape (in, out).

    Claimed by :meth:`matches` (the class is recognised by its shape; ``transformers`` is never imported).
    """

    types = ()
    weight_dims = {"out": 1, "in": 0}

    @staticmethod
    def matches(module) -> bool:
        return is_transposed_linear(module)

    def out_size(self, m) -> int:
        return int(m.nf)

    def update_attrs(self, m, keep):
        changed = {}
        if "out" in keep:
            m.nf = changed["nf"] = len(keep["out"])
        if "in" in keep and hasattr(m, "nx"):
            m.nx = changed["nx"] = len(keep["in"])
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
