"""Extension points: a user layer handler, a user op rule, and modules marked as leaves."""
from __future__ import annotations

import torch
from torch import nn

from prunekit.graph import register_op
from prunekit.graph.ops import FUNCTION_RULES, elementwise
from prunekit.structured import LAYER_HANDLERS, describe_groups, get_plan, handler_for, register_handler
from prunekit.api import prune
from prunekit.structured.handlers.norm import BatchNormHandler

from structured_helpers import assert_outputs_close, masked_reference, outputs


class ChannelScale(nn.Module):
    """A per-channel learned scale: a layer type prunekit does not know."""

    def __init__(self, c: int):
        super().__init__()
        self.weight = nn.Parameter(torch.rand(c) + 0.5)

    def forward(self, x):
        return x * self.weight.view(1, -1, 1, 1)


class ScaleHandler(BatchNormHandler):
    """Reuse the per-channel handler: one 'chan' member over the weight."""

    types = (ChannelScale,)

    def param_slices(self, m, kind):
        return [("weight", 0, None)] if kind == "chan" else []

    def update_attrs(self, m, keep):
        return {}


def scaled_net():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 6, 3), nn.Conv2d(6, 2, 1))
    net.insert(2, ChannelScale(8))
    return net.eval(), torch.randn(2, 3, 9, 9)


def test_user_handler_makes_an_unknown_layer_prunable():
    model, x = scaled_net()
    traced_through = prune(model, x, ratio=0.5, granularity="channel", criterion="l2", scope="local")  # fx traces into it: view/mul rules apply
    assert traced_through[2].weight.numel() == 4
    register_handler("test_channel_scale", override=True)(ScaleHandler)
    try:
        small = prune(model, x, ratio=0.5, leaf_modules=[ChannelScale], granularity="channel", criterion="l2", scope="local")
        assert small[2].weight.numel() == 4 and small[0].out_channels == 4
        assert_outputs_close(outputs(small, x), outputs(masked_reference(model, get_plan(small)), x))
    finally:
        LAYER_HANDLERS.unregister("test_channel_scale")
    assert handler_for(ChannelScale(4)) is None  # unregistering removed the type lookup too


def test_leaf_without_handler_is_kept_whole_and_listed():
    model, x = scaled_net()
    groups = describe_groups(model, x, leaf_modules=["2"])
    opaque = [g for g in groups if g["kind"] == "opaque"][0]
    assert ("2", "ChannelScale has no structured-pruning handler") in opaque["left_out"]
    small = prune(model, x, ratio=0.5, leaf_modules=["2"], granularity="channel", criterion="l2", scope="local")
    assert small[0].out_channels == 8 and small[3].out_channels == 3


def test_user_op_rule():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(3, 6, 1), nn.Conv2d(6, 2, 1)

        def forward(self, x):
            return self.b(torch.logaddexp(self.a(x), self.a(x)))

    torch.manual_seed(0)
    model, x = Net().eval(), torch.randn(1, 3, 4, 4)
    before = [g for g in describe_groups(model, x) if ("a", "Conv2d", 0, 6) in g["members"]][0]
    assert before["prunable"] == 0  # logaddexp has no rule: left out
    register_op(torch.logaddexp)(elementwise)
    try:
        after = [g for g in describe_groups(model, x) if ("a", "Conv2d", 0, 6) in g["members"]][0]
        assert after["prunable"] == 6
        small = prune(model, x, ratio=0.5, granularity="channel", criterion="l2", scope="local")
        assert small.a.out_channels == 3
    finally:
        FUNCTION_RULES.unregister(torch.logaddexp)
