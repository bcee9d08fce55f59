"""A fused qkv Linear split by an int attribute (nanoGPT's `.split(self.n_embd, dim=2)`): the attribute follows
the pruned width; split by a literal int, those channels are locked (and listed) while the rest is pruned."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.api import prune
from prunekit.structured import get_plan
from prunekit.structured.describe import describe_groups

from structured_helpers import assert_outputs_close, masked_reference, outputs


class Attn(nn.Module):
    def __init__(self, d=32, heads=4, named=True):
        super().__init__()
        self.c_attn, self.c_proj, self.n_head, self.named = nn.Linear(d, 3 * d), nn.Linear(d, d), heads, named
        if named:
            self.n_embd = d

    def forward(self, x):
        b, t, _ = x.size()
        q, k, v = self.c_attn(x).split(self.n_embd if self.named else 32, dim=2)
        q, k, v = (z.view(b, t, self.n_head, -1).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(b, t, -1))


class Net(nn.Module):
    def __init__(self, named):
        super().__init__()
        self.inp, self.attn = nn.Linear(8, 32), Attn(named=named)
        self.mlp = nn.Sequential(nn.Linear(32, 64), nn.GELU(), nn.Linear(64, 32))
        self.head = nn.Linear(32, 5)

    def forward(self, x):
        h = self.inp(x)
        h = h + self.attn(h)
        return self.head(h + self.mlp(h))


@pytest.mark.parametrize("named", [True, False])
def test_split_size_attribute_is_updated_or_the_channels_locked(named):
    torch.manual_seed(0)
    model, x = Net(named).eval(), torch.randn(2, 6, 8)
    small = prune(model, x, granularity="channel", ratio=0.3, scope="local", criterion="l2")
    assert small.mlp[0].out_features < 64 and small.inp.out_features < 32  # the rest of the model is pruned
    if named:
        assert small.attn.c_attn.out_features < 96 and small.attn.n_embd == small.attn.c_attn.out_features // 3
    else:
        assert small.attn.c_attn.out_features == 96
        reasons = [why for g in describe_groups(model, x) if not g["prunable"] for _, why in g["left_out"]]
        assert any("split size 32 is hard-coded in attn" in r for r in reasons)
    assert_outputs_close(outputs(small, x), outputs(masked_reference(model, get_plan(small)), x))
