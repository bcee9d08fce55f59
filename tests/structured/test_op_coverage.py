"""Channel rules for ops that leave channels alone: dropout of every kind, roll, filled tensors, index gathers.

Each model puts one op between two layers. Where the op leaves the channels in place, the layer before it must
shrink and the pruned model must equal the original with the removed channels zeroed (no norm sits on them);
where it moves channels (a roll or a gather along the channel dim) the layer must keep its width and the
pruned model must still run. Both captures are checked: torch.fx and torch.export (which records other ops:
``aten.dropout_``, ``aten.index``).
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit.structured import get_plan

from structured.structured_helpers import assert_outputs_close, masked_reference, outputs

TRACERS = ("fx", "export")


def pruned(model: nn.Module, x, tracer: str, ratio: float = 0.5):
    torch.manual_seed(0)
    return prunekit.prune(model, x, granularity="channel", ratio=ratio, criterion="l2", scope="local", tracer=tracer)


def assert_masked_twin(original: nn.Module, small: nn.Module, x) -> None:
    assert_outputs_close(outputs(small, x), outputs(masked_reference(original, get_plan(small)), x))


# ---- dropout ---------------------------------------------------------------------------------------------------
DROPOUTS = {
    "module_inplace": lambda: nn.Dropout(0.1, inplace=True),  # HF MobileNetV2's classifier dropout
    "functional_inplace": lambda: Fn(lambda h: F.dropout(h, 0.1, training=False, inplace=True)),
    "torch_dropout_": lambda: Fn(lambda h: torch.dropout_(h, 0.1, False)),
    "feature_dropout2d": lambda: Fn(lambda h: F.dropout2d(h, 0.1, training=False)),
    "alpha_dropout": lambda: Fn(lambda h: F.alpha_dropout(h, 0.1, training=False)),
    "feature_alpha_dropout": lambda: Fn(lambda h: F.feature_alpha_dropout(h, 0.1, training=False)),
    "torch_feature_dropout_": lambda: Fn(lambda h: torch.feature_dropout_(h, 0.1, False)),
}


class Fn(nn.Module):
    """A function as a layer with no handler of its own: traced through, so its ops reach the op rules."""

    def __init__(self, fn):
        super().__init__()
        self.fn = fn

    def forward(self, h):
        return self.fn(h)


class Between(nn.Module):
    """conv (3 -> 8) -> conv (8 -> 16) -> relu -> ``op`` -> conv (16 -> 4): the op sits on conv1's 16 channels
    (conv0's 8 are prunable whatever the op does)."""

    def __init__(self, op: nn.Module):
        super().__init__()
        self.conv0, self.conv1 = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 16, 3, padding=1)
        self.op, self.conv2 = op, nn.Conv2d(16, 4, 1)

    def forward(self, x):
        return self.conv2(self.op(torch.relu(self.conv1(torch.relu(self.conv0(x))))))


IMAGE = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("tracer", TRACERS)
@pytest.mark.parametrize("variant", list(DROPOUTS))
def test_dropout_of_every_kind_passes_channels(variant, tracer):
    torch.manual_seed(0)
    model = Between(DROPOUTS[variant]()).eval()
    small = pruned(copy.deepcopy(model), IMAGE, tracer)
    assert small.conv1.out_channels == 8 and small.conv2.in_channels == 8
    assert_masked_twin(model, small, IMAGE)


# ---- other ops that leave channels in place ---------------------------------------------------------------------
class SpatialGather(nn.Module):
    """``index_select`` along the height (a gather that leaves the channels alone)."""

    def __init__(self):
        super().__init__()
        self.register_buffer("rows", torch.tensor([5, 0, 3, 3, 1]))

    def forward(self, h):
        return torch.index_select(h, 2, self.rows)


TRANSPARENT = {
    "flip_channels": lambda: Fn(lambda h: torch.flip(h, dims=(1, 3))),  # exact: the kept channels reverse too
    "max_pool_with_indices": lambda: Fn(lambda h: F.max_pool2d(h, 2, return_indices=True)[0]),
    "unary_math": lambda: Fn(lambda h: torch.log1p(torch.square(h)) + torch.clamp_min(h, 0.1).reciprocal()),
    "comparison_and_blend": lambda: Fn(lambda h: torch.lerp(h, h * (h > 0.2), 0.25)),
    "narrow_height": lambda: Fn(lambda h: h.narrow(2, 1, 5)),
    "index_select_height": SpatialGather,
    "reflection_pad": lambda: Fn(lambda h: F.pad(h, (1, 1, 1, 1), mode="reflect")),
}


@pytest.mark.parametrize("tracer", TRACERS)
@pytest.mark.parametrize("variant", list(TRANSPARENT))
def test_ops_that_leave_channels_in_place_pass_them(variant, tracer):
    torch.manual_seed(0)
    model = Between(TRANSPARENT[variant]()).eval()
    small = pruned(copy.deepcopy(model), IMAGE, tracer)
    assert small.conv1.out_channels == 8 and small.conv2.in_channels == 8
    assert_masked_twin(model, small, IMAGE)


# ---- roll ------------------------------------------------------------------------------------------------------
class Roll(nn.Module):
    def __init__(self, shifts, dims):
        super().__init__()
        self.shifts, self.dims = shifts, dims

    def forward(self, h):
        return torch.roll(h, self.shifts, self.dims)


@pytest.mark.parametrize("tracer", TRACERS)
def test_roll_over_spatial_dims_passes_channels(tracer):
    torch.manual_seed(0)
    model = Between(Roll((1, -2), (2, 3))).eval()  # Swin's shifted windows roll height and width
    small = pruned(copy.deepcopy(model), IMAGE, tracer)
    assert small.conv1.out_channels == 8
    assert_masked_twin(model, small, IMAGE)


@pytest.mark.parametrize("tracer", TRACERS)
@pytest.mark.parametrize("shifts, dims", [(3, 1), ((1, 2), (1, 2)), (5, None)], ids=["channel", "channel+h", "flat"])
def test_roll_over_the_channel_dim_keeps_the_channels(shifts, dims, tracer):
    torch.manual_seed(0)
    model = Between(Roll(shifts, dims)).eval()
    small = pruned(copy.deepcopy(model), IMAGE, tracer)
    assert small.conv1.out_channels == 16 and small.conv2.in_channels == 16  # rolled channels stay
    assert small.conv0.out_channels == 4
    assert_masked_twin(model, small, IMAGE)


# ---- filled tensors (T5's cross-attention position bias) ------------------------------------------------------
class BiasedAttention(nn.Module):
    """Attention whose scores get a zero bias made with ``zeros(1, self.num_heads, s, s)``, as T5's
    cross-attention makes its position bias from ``self.n_heads``; ``by_rows``: sized by ``self.bias_rows``,
    equal to the head count, but nothing says it shrinks with it."""

    def __init__(self, dim: int = 16, heads: int = 4, by_rows: bool = False):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.num_heads, self.head_dim, self.bias_rows, self.by_rows = heads, dim // heads, heads, by_rows

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = (f(x).view(b, s, -1, self.head_dim).transpose(1, 2) for f in (self.q, self.k, self.v))
        if self.by_rows:
            bias = torch.zeros(1, self.bias_rows, s, s, dtype=x.dtype)
        else:
            bias = torch.zeros(1, self.num_heads, s, s, dtype=x.dtype)
        attn = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1) @ v
        return self.o(attn.transpose(1, 2).reshape(b, s, -1))


TOKENS = torch.randn(2, 5, 16, generator=torch.Generator().manual_seed(1))


class Block(nn.Module):
    """A Linear whose 16 outputs feed the attention (a group that is prunable whatever the heads do)."""

    def __init__(self, attention: nn.Module):
        super().__init__()
        self.fc, self.attention = nn.Linear(16, 16), attention

    def forward(self, x):
        return self.attention(torch.relu(self.fc(x)))


@pytest.mark.parametrize("tracer", TRACERS)
def test_a_zero_bias_sized_by_the_head_count_shrinks_with_the_heads(tracer):
    torch.manual_seed(0)
    model = Block(BiasedAttention()).eval()
    small = pruned(copy.deepcopy(model), TOKENS, tracer)
    a = small.attention
    assert a.q.out_features == 8 and a.o.in_features == 8 and a.num_heads == 2  # 2 of 4 heads
    assert_masked_twin(model, small, TOKENS)


@pytest.mark.parametrize("tracer", TRACERS)
def test_a_zero_bias_sized_by_another_attribute_keeps_the_heads(tracer):
    torch.manual_seed(0)
    model = Block(BiasedAttention(by_rows=True)).eval()
    small = pruned(copy.deepcopy(model), TOKENS, tracer)
    assert small.attention.q.out_features == 16 and small.attention.bias_rows == 4
    assert small.fc.out_features == 8
    assert_masked_twin(model, small, TOKENS)


# ---- gathers by an index tensor (Swin's relative-position bias table) -----------------------------------------
class TableAttention(nn.Module):
    """Attention with a per-head bias gathered from a table: ``table[index]`` of (positions, heads) rows, as
    Swin's relative-position bias; ``gather_heads`` gathers along the head dim instead (the heads must stay)."""

    def __init__(self, dim: int = 16, heads: int = 4, seq: int = 5, gather_heads: bool = False):
        super().__init__()
        self.q, self.k, self.v, self.o = (nn.Linear(dim, dim) for _ in range(4))
        self.num_heads, self.head_dim, self.gather_heads = heads, dim // heads, gather_heads
        self.table = nn.Parameter(torch.randn(2 * seq - 1, heads))
        pos = torch.arange(seq)
        self.register_buffer("index", (pos[:, None] - pos[None, :] + seq - 1).reshape(-1))
        self.register_buffer("head_order", torch.arange(heads).flip(0))

    def forward(self, x):
        b, s, _ = x.shape
        q, k, v = (f(x).view(b, s, -1, self.head_dim).transpose(1, 2) for f in (self.q, self.k, self.v))
        table = self.table[:, self.head_order] if self.gather_heads else self.table
        bias = table[self.index].view(s, s, -1).permute(2, 0, 1)
        attn = torch.softmax(q @ k.transpose(-1, -2) + bias, dim=-1) @ v
        return self.o(attn.transpose(1, 2).reshape(b, s, -1))


@pytest.mark.parametrize("tracer", TRACERS)
def test_a_bias_gathered_from_a_table_shrinks_with_the_heads(tracer):
    torch.manual_seed(0)
    model = Block(TableAttention()).eval()
    small = pruned(copy.deepcopy(model), TOKENS, tracer)
    # the bias table lost the removed heads' columns
    assert small.attention.q.out_features == 8 and small.attention.table.shape == (9, 2)
    assert_masked_twin(model, small, TOKENS)


@pytest.mark.parametrize("tracer", TRACERS)
def test_a_gather_along_the_head_dim_keeps_the_heads(tracer):
    torch.manual_seed(0)
    model = Block(TableAttention(gather_heads=True)).eval()
    small = pruned(copy.deepcopy(model), TOKENS, tracer)
    assert small.attention.q.out_features == 16 and small.attention.table.shape == (9, 4)
    assert small.fc.out_features == 8
    assert_masked_twin(model, small, TOKENS)
