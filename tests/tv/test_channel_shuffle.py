"""A channel shuffle (split into (groups, c/groups), transpose, flatten) permutes channels: both branches stay
prunable, each atom is one position of every group, and the pruned model equals its masked twin."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit
from prunekit.structured import get_plan
from prunekit.structured.describe import describe_groups
from structured.structured_helpers import assert_outputs_close, masked_reference, outputs


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    b, c, h, w = x.size()
    x = x.view(b, groups, c // groups, h, w)
    x = torch.transpose(x, 1, 2).contiguous()
    return x.view(b, -1, h, w)


class Shuffled(nn.Module):
    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 8, 1)
        self.b = nn.Conv2d(3, 8, 3, padding=1)
        self.head = nn.Conv2d(16, 5, 1)

    def forward(self, x):
        y = torch.cat([torch.relu(self.a(x)), torch.relu(self.b(x))], 1)
        return self.head(channel_shuffle(y, 2))


@pytest.mark.parametrize("tracer", ["fx", "export"])
def test_channel_shuffle_prunes_both_branches_exactly(tracer):
    torch.manual_seed(0)
    model = Shuffled().eval()
    x = torch.randn(2, 3, 8, 8)
    groups = [g for g in describe_groups(model, x, tracer=tracer) if any(m[0] == "a" for m in g["members"])]
    assert groups and groups[0]["prunable"] == 8 and not groups[0]["left_out"]  # one atom per column
    original = copy.deepcopy(model)
    pruned = prunekit.prune(model, x, granularity="channel", ratio=0.5, criterion="l2", tracer=tracer)
    assert pruned.a.out_channels == pruned.b.out_channels == 4  # the same number from each group
    assert pruned.head.in_channels == 8
    assert_outputs_close(outputs(pruned, x), outputs(masked_reference(original, get_plan(pruned)), x))


def test_head_split_merged_in_order_is_not_a_shuffle():
    class Heads(nn.Module):
        def __init__(self):
            super().__init__()
            self.num_heads = 2
            self.proj = nn.Linear(8, 8)
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            b, s, _ = x.shape
            y = self.proj(x).view(b, s, self.num_heads, -1).transpose(1, 2)
            return self.out(y.transpose(1, 2).reshape(b, s, -1))

    groups = describe_groups(Heads(), torch.randn(1, 4, 8))
    proj = [g for g in groups if any(m[0] == "proj" for m in g["members"])]
    assert proj[0]["channels"] == 2  # merged back in order: the head split's rule (whole heads), not a shuffle
