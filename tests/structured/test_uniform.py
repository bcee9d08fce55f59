"""uniform=True: every group of a kind (names equal up to block numbers) removes the same count."""
from __future__ import annotations

import torch
from torch import nn

from prunekit.api import prune
from prunekit.structured import get_plan
from prunekit.structured.api import group_role

from structured_helpers import assert_outputs_close, masked_reference, outputs


class Block(nn.Module):
    def __init__(self, d=16, h=48):
        super().__init__()
        self.up, self.down = nn.Linear(d, h), nn.Linear(h, d)

    def forward(self, x):
        return x + self.down(torch.relu(self.up(x)))


def model():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), *[Block() for _ in range(3)], nn.Linear(16, 4))
    with torch.no_grad():  # very different weight scales per block: a global ranking cuts them unevenly
        for i, scale in ((1, 0.1), (2, 1.0), (3, 10.0)):
            net[i].up.weight.mul_(scale)
    return net.eval()


def test_uniform_equalises_the_blocks_and_keeps_the_budget():
    x = torch.randn(5, 8)
    free = prune(model(), x, granularity="channel", ratio=0.5, scope="global", criterion="l2", ignore=["0"])
    widths = [free[i].up.out_features for i in (1, 2, 3)]
    assert len(set(widths)) > 1  # the ranking alone cuts the blocks differently
    even = prune(model(), x, granularity="channel", ratio=0.5, scope="global", criterion="l2", ignore=["0"],
                 uniform=True)
    even_widths = [even[i].up.out_features for i in (1, 2, 3)]
    assert len(set(even_widths)) == 1
    assert abs(sum(even_widths) - sum(widths)) <= 3  # the mean count: the same budget, spread evenly
    assert_outputs_close(outputs(even, x), outputs(masked_reference(model(), get_plan(even)), x))


def test_roles_ignore_block_numbers_only():
    from prunekit.graph import build_graph
    from prunekit.structured.handlers import handler_for

    g = build_graph(model(), torch.randn(2, 8), module_rule=handler_for)
    roles = {}
    for group in g.groups:
        roles.setdefault(group_role(group), []).append(group.index)
    hidden = [r for r in roles if ("#.up", "out") in r[0]]
    assert len(hidden) == 1 and len(roles[hidden[0]]) == 3  # the three blocks' hidden groups share one role
