"""Per-channel layers: BatchNorm, InstanceNorm, GroupNorm (whole groups), LayerNorm (last dim), PReLU."""
from __future__ import annotations

from typing import Any

from torch import nn

from .base import LayerHandler, register_handler

_BN = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)
_IN = (nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d)


class _ChannelHandler(LayerHandler):
    """The output layout is the input's; the channel dim's ids become this layer's 'chan' member."""

    spatial = None  # number of trailing dims after the channel dim; None: channel dim is 1 (or 0 when 1-D)

    def channel_dim(self, m, ndim: int) -> int:
        return 1 if ndim >= 2 else 0

    def propagate(self, p, node, m, name) -> Any:
        lay = p.layout(node.args[0])
        if lay is None:
            return p.untracked_like(node)
        d = self.channel_dim(m, lay.ndim)
        self.couple(p, m, name, lay.dims[d])
        p.add_member(name, "chan", lay.dims[d])
        return lay

    def couple(self, p, m, name, ids) -> None:
        """Hook for layers whose channels are removed in blocks (GroupNorm)."""

    def param_slices(self, m, kind):
        if kind != "chan":
            return []
        return [("weight", 0, None), ("bias", 0, None), ("running_mean", 0, None), ("running_var", 0, None)]


@register_handler("batchnorm")
class BatchNormHandler(_ChannelHandler):
    types = _BN + _IN

    def channel_dim(self, m, ndim):
        if isinstance(m, _IN):
            spatial = int(type(m).__name__[-2])
            return ndim - spatial - 1
        return 1 if ndim >= 2 else 0

    def update_attrs(self, m, keep):
        m.num_features = len(keep["chan"])
        return {"num_features": m.num_features}


@register_handler("groupnorm")
class GroupNormHandler(_ChannelHandler):
    types = (nn.GroupNorm,)

    def couple(self, p, m, name, ids) -> None:
        if ids is not None:
            p.ids.union_blocks(ids, m.num_channels // m.num_groups)  # statistics are per group: remove groups whole

    def update_attrs(self, m, keep):
        per = m.num_channels // m.num_groups
        m.num_channels = len(keep["chan"])
        m.num_groups = m.num_channels // per
        return {"num_channels": m.num_channels, "num_groups": m.num_groups}


@register_handler("layernorm")
class LayerNormHandler(_ChannelHandler):
    types = (nn.LayerNorm,)

    def propagate(self, p, node, m, name) -> Any:
        lay = p.layout(node.args[0])
        if lay is None:
            return p.untracked_like(node)
        k = len(tuple(getattr(m, "normalized_shape", None) or (1,)))  # an RMSNorm class may not keep one
        if k == 1:
            p.add_member(name, "chan", lay.dims[-1])
        else:
            for ids in lay.dims[-k:]:
                p.ids.freeze(ids, f"{name} normalises over several dims including a channel dim")
        return lay

    def update_attrs(self, m, keep):
        m.normalized_shape = (len(keep["chan"]),)
        return {"normalized_shape": list(m.normalized_shape)}


@register_handler("prelu")
class PReLUHandler(_ChannelHandler):
    types = (nn.PReLU,)

    def propagate(self, p, node, m, name) -> Any:
        if m.num_parameters == 1:
            return p.layout(node.args[0]) or p.untracked_like(node)
        return super().propagate(p, node, m, name)

    def param_slices(self, m, kind):
        return [("weight", 0, None)] if kind == "chan" else []

    def update_attrs(self, m, keep):
        m.num_parameters = len(keep["chan"])
        return {"num_parameters": m.num_parameters}


def is_rms_norm(module) -> bool:
    """An RMSNorm of a model library (Llama's LlamaRMSNorm, Qwen2RMSNorm, T5's T5LayerNorm, ...), recognised by
    its shape: one 1-D ``weight``, no bias, an epsilon attribute, and a class name saying RMS / T5 norm.
    It computes ``weight * x / sqrt(mean(x^2, last dim) + eps)`` over the last dim."""
    name = type(module).__name__
    if not (name.endswith("RMSNorm") or name == "T5LayerNorm") or isinstance(module, nn.LayerNorm):
        return False
    w = getattr(module, "weight", None)
    eps = getattr(module, "variance_epsilon", getattr(module, "eps", None))
    return (isinstance(w, nn.Parameter) and w.dim() == 1 and getattr(module, "bias", None) is None
            and isinstance(eps, float))


@register_handler("rmsnorm")
class RMSNormHandler(LayerNormHandler):
    """RMS normalisation over the last dim (torch's nn.RMSNorm and the RMSNorm classes of model libraries):
    its channels are the last dim's; removing some changes the mean over the rest, like LayerNorm."""

    types = tuple(t for t in (getattr(nn, "RMSNorm", None),) if t is not None)

    @staticmethod
    def matches(module) -> bool:
        return is_rms_norm(module)

    def update_attrs(self, m, keep):
        if getattr(m, "normalized_shape", None) is not None:
            return super().update_attrs(m, keep)
        return {}
