"""Every registered layer handler, for every layer type it claims (parametrised over LAYER_HANDLERS).

For each type a tiny model puts that layer where channels flow through it; channel pruning must give a model
whose outputs equal the masked reference (the unpruned model with every removed slice zeroed, see
structured_helpers.masked_reference) and the layer's channels must actually have been removed. A type with no
entry in ``BUILD`` below goes through the generic builder (constructed without arguments between two
convolutions), so a newly registered handler is tested without editing this file; if its type cannot be built
that way the test fails and says which builder to add.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.structured import LAYER_HANDLERS, get_plan
from prunekit.api import prune

from structured_helpers import assert_outputs_close, masked_reference, outputs

try:  # the zoo's norm randomiser (non-trivial affine parameters and running statistics)
    from zoo import randomize_norms
except ImportError:  # pragma: no cover
    from tests.zoo import randomize_norms

C = 8  # channels entering the layer under test
CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}


def rank_of(t: type) -> int:
    """Spatial rank from the class name (``...1d`` / ``2d`` / ``3d``); 2 for rank-agnostic layers."""
    name = t.__name__.lower()
    return int(name[-2]) if name[-1] == "d" and name[-2] in "123" else 2


def under_test(layer: nn.Module) -> nn.Module:
    """Tag the layer the case is about (a model may hold other layers of the same type)."""
    layer._under_test = True
    return layer


def sandwich(layer: nn.Module, rank: int):
    """conv(3 -> C) -> layer -> conv(C -> 4): the layer sees C channels in the channel dim."""
    conv = CONV[rank]
    model = nn.Sequential(conv(3, C, 3, padding=1), under_test(layer), conv(C, 4, 1))
    return model, torch.randn(2, 3, *([6] * rank))


class Attention(nn.Module):
    def __init__(self, t):
        super().__init__()
        self.inp = nn.Linear(6, C)
        self.attn = under_test(t(C, 2, batch_first=True))
        self.out = nn.Linear(C, 4)

    def forward(self, x):
        h = self.inp(x)
        return self.out(self.attn(h, h, h, need_weights=False)[0])


ELEMENTWISE_KWARGS = {
    "MaxPool": dict(kernel_size=2), "AvgPool": dict(kernel_size=2), "AdaptiveAvgPool": dict(output_size=2),
    "AdaptiveMaxPool": dict(output_size=2), "Upsample": dict(scale_factor=2), "UpsamplingNearest2d": dict(scale_factor=2),
    "UpsamplingBilinear2d": dict(scale_factor=2), "ZeroPad2d": dict(padding=1), "ConstantPad": dict(padding=1, value=0.5),
    "ReflectionPad": dict(padding=1), "ReplicationPad": dict(padding=1),
}


def elementwise(t):
    kwargs = next((kw for prefix, kw in ELEMENTWISE_KWARGS.items() if t.__name__.startswith(prefix)), {})
    return sandwich(t(**kwargs), rank_of(t))


def per_channel(t):
    if issubclass(t, nn.GroupNorm):
        return sandwich(t(4, C), 2)
    if t.__name__.startswith("InstanceNorm"):
        return sandwich(t(C, affine=True), rank_of(t))
    if issubclass(t, nn.PReLU):
        return sandwich(t(C, init=0.1), 2)
    return sandwich(t(C), rank_of(t))


def conv(t):
    return sandwich(t(C, C, 3, padding=1), rank_of(t))


def linear(t):
    return nn.Sequential(nn.Linear(6, C), nn.ReLU(), under_test(t(C, C)), nn.ReLU(), nn.Linear(C, 4)), torch.randn(3, 6)


def embedding(t):
    return nn.Sequential(under_test(t(20, C)), nn.ReLU(), nn.Linear(C, 4)), torch.randint(0, 20, (2, 5))


def layernorm(t):
    return nn.Sequential(nn.Linear(6, C), under_test(t(C)), nn.ReLU(), nn.Linear(C, 4)), torch.randn(2, 5, 6)


def flatten(t):
    if issubclass(t, nn.Unflatten):  # (N, 2C) -> (N, C, 2): Linear outputs in pairs become conv channels
        return nn.Sequential(nn.Linear(6, 2 * C), under_test(t(1, (C, 2))), nn.Conv1d(C, 6, 1), nn.ReLU(), nn.Conv1d(6, 4, 1),
                             nn.Flatten()), torch.randn(3, 6)
    return nn.Sequential(nn.Conv2d(3, C, 3, padding=1), nn.ReLU(), under_test(t()), nn.Linear(C * 36, 4)), torch.randn(2, 3, 6, 6)


def softmax(t):
    return sandwich(t(dim=-1), 2)  # normalises over width: channels stay prunable


def attention(t):
    return Attention(t), torch.randn(2, 5, 6)


def generic(t):
    try:
        layer = t()
    except TypeError as exc:
        pytest.fail(f"{t.__name__} cannot be built without arguments ({exc}); add a builder for its handler to BUILD")
    return sandwich(layer, rank_of(t))


BUILD = {"elementwise": elementwise, "batchnorm": per_channel, "groupnorm": per_channel, "prelu": per_channel,
         "conv": conv, "linear": linear, "embedding": embedding, "layernorm": layernorm, "rmsnorm": layernorm, "flatten": flatten,
         "softmax": softmax, "multihead_attention": attention}

CASES = [pytest.param(name, t, id=f"{name}-{t.__name__}")
         for name in LAYER_HANDLERS.names() for t in LAYER_HANDLERS.get(name).types]


def pruned_widths(model) -> dict:
    """Channel counts of every module that has one (to see what pruning removed)."""
    out = {}
    for name, m in model.named_modules():
        for attr in ("out_channels", "out_features", "num_features", "num_channels", "embedding_dim", "embed_dim",
                     "num_parameters", "normalized_shape"):
            if hasattr(m, attr):
                out[(name, attr)] = getattr(m, attr)
    return out


@pytest.mark.parametrize("handler, layer_type", CASES)
def test_every_handled_layer_prunes_to_the_masked_model(handler, layer_type):
    torch.manual_seed(0)
    model, x = BUILD.get(handler, generic)(layer_type)
    model = randomize_norms(model).eval()
    with torch.no_grad():
        before = outputs(model, x)
    small = prune(model, x, ratio=0.5, granularity="channel", criterion="l2", scope="local")
    plan = get_plan(small)
    assert_outputs_close(outputs(small, x), outputs(masked_reference(model, plan), x))
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    # the layer under test took part: its own channel count shrank, or (a parameter-free layer) the layer
    # feeding it lost channels that had to flow through it
    index, layer_name = next((i, n) for i, (n, m) in enumerate(model.named_children()) if getattr(m, "_under_test", 0))
    assert type(getattr(model, layer_name)) is layer_type
    widths_before, widths_after = pruned_widths(model), pruned_widths(small)
    watched = [k for k in widths_before if k[0] == layer_name]
    if not watched:  # parameter-free: the closest layer before it that has a channel count
        children = list(dict(model.named_children()))
        feeder = next(n for n in reversed(children[:index]) if any(k[0] == n for k in widths_before))
        watched = [k for k in widths_before if k[0] == feeder]
    assert watched and any(widths_after[k] != widths_before[k] for k in watched), (layer_name, plan["modules"])
    assert all(o.shape == b.shape for o, b in zip(outputs(small, x), before))


@pytest.mark.parametrize("t", LAYER_HANDLERS.get("softmax").types)
def test_softmax_over_channels_keeps_them(t):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, C, 3, padding=1), t(dim=1), nn.Conv2d(C, 6, 1), nn.ReLU(), nn.Conv2d(6, 4, 1))
    x = torch.randn(2, 3, 6, 6)
    small = prune(model.eval(), x, ratio=0.5, granularity="channel", criterion="l2", scope="local")
    assert small[0].out_channels == C  # normalising over the channel dim couples them all: nothing removed there
    assert small[2].out_channels == 3  # the group after it is pruned as usual
    assert_outputs_close(outputs(small, x), outputs(masked_reference(model, get_plan(small)), x))
