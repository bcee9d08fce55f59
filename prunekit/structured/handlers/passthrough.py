"""Layers that keep channels as they are: activations, dropout, pooling, up-sampling, flatten (re-shaping rule), softmax."""
from __future__ import annotations

from typing import Any

from torch import nn

from ...graph.layout import Layout, norm_dim
from ...graph.propagate import ConstPatch
from ...graph.ops import same_rank
from ...graph.reshape import reshape_rule
from .base import LayerHandler, register_handler

ACTIVATIONS = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.ELU,
    nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d,
    nn.Dropout3d, nn.AlphaDropout, nn.Tanhshrink, nn.Softsign, nn.LogSigmoid,
)
POOLING = (
    nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d, nn.AdaptiveAvgPool1d,
    nn.AdaptiveAvgPool2d, nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
    nn.Upsample, nn.UpsamplingNearest2d, nn.UpsamplingBilinear2d, nn.ZeroPad2d, nn.ConstantPad2d, nn.ReflectionPad2d,
    nn.ReplicationPad2d, nn.ConstantPad1d, nn.ReflectionPad1d,
)


@register_handler("elementwise")
class ElementwiseHandler(LayerHandler):
    """Element-wise activations and dropout: same shape, same channel ids (dims that change size are frozen)."""

    types = ACTIVATIONS + POOLING

    def propagate(self, p, node, m, name) -> Any:
        if p.layout(node.args[0]) is None:
            return p.untracked_like(node)
        return same_rank(p, node)


@register_handler("flatten")
class FlattenHandler(LayerHandler):
    """Flatten / Unflatten re-shape like view; an Unflatten's ``unflattened_size`` entries that carry channels
    are recorded as attributes to shrink (``unflattened_size[i]``), so channels may be pruned through it."""

    types = (nn.Flatten, nn.Unflatten)

    def propagate(self, p, node, m, name) -> Any:
        lay = p.layout(node.args[0])
        if lay is None:
            return p.untracked_like(node)
        out = reshape_rule(p, node)
        if isinstance(m, nn.Unflatten) and isinstance(out, Layout):
            if isinstance(m.dim, str):  # named-tensor Unflatten: sizes are (name, size) pairs we do not rewrite
                p.freeze_all([d for d in out.dims if d is not None], f"{name} unflattens a named dim")
                return out
            first = norm_dim(m.dim, lay.ndim)
            for i in range(len(m.unflattened_size)):
                ids = out.dims[first + i]
                if ids is not None:
                    p.result.patches.append(ConstPatch(name, f"unflattened_size[{i}]", ids))
        return out


@register_handler("softmax")
class SoftmaxHandler(LayerHandler):
    types = (nn.Softmax, nn.LogSoftmax, nn.Softmin)

    def propagate(self, p, node, m, name) -> Any:
        lay = p.layout(node.args[0])
        if lay is None:
            return p.untracked_like(node)
        d = norm_dim(m.dim if m.dim is not None else 1, lay.ndim)
        p.ids.freeze(lay.dims[d], f"{name} normalises over a channel dim")
        return lay
