"""Layers that keep channels as they are: activations, dropout, pooling, up-sampling, flatten (re-shaping rule), softmax."""
from __future__ import annotations

from typing import Any

from torch import nn

from ...graph.layout import norm_dim
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
    types = (nn.Flatten, nn.Unflatten)

    def propagate(self, p, node, m, name) -> Any:
        if p.layout(node.args[0]) is None:
            return p.untracked_like(node)
        return reshape_rule(p, node)


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
