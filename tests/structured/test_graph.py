"""Dependency groups on hand-built models: residuals, concat offsets, flatten blocks, left-out ops, trace errors."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import TraceError
from prunekit.structured import LAYER_HANDLERS, apply_plan, describe_groups, get_plan, handler_for
from prunekit.api import prune

from structured_helpers import ZOO, assert_outputs_close, masked_reference, outputs


def groups_by_producer(model, x, **kw):
    """producer module name -> group dict, for groups whose members include that layer's output."""
    out = {}
    for g in describe_groups(model, x, **kw):
        for name, typ, dim, n in g["members"]:
            out.setdefault(name, []).append(g)
    return out


class Residual(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.c = nn.Conv2d(3, 6, 3, padding=1), nn.Conv2d(6, 6, 3, padding=1), nn.Conv2d(6, 4, 1)

    def forward(self, x):
        y = torch.relu(self.a(x))
        return self.c(y + self.b(y))


def test_residual_add_couples_both_producers_into_one_group():
    torch.manual_seed(0)
    groups = describe_groups(Residual(), torch.randn(1, 3, 8, 8))
    coupled = [g for g in groups if {"a", "b"} <= {m[0] for m in g["members"]}]
    assert len(coupled) == 1 and coupled[0]["channels"] == 6 and coupled[0]["prunable"] == 6
    assert ("c", "Conv2d", 1, 6) in coupled[0]["members"]


class Concat(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(3, 6, 1), nn.Conv2d(10, 2, 1)

    def forward(self, x):
        return self.head(torch.cat([self.a(x), self.b(x)], dim=1))


def test_concat_keeps_offsets_into_the_consumer():
    torch.manual_seed(0)
    model, x = Concat().eval(), torch.randn(2, 3, 5, 5)
    small = prune(model, x, ratio=0.5, granularity="channel", criterion="l2", scope="local")
    plan = get_plan(small)
    kept_a, kept_b = plan["modules"]["a"]["keep"]["out"], plan["modules"]["b"]["keep"]["out"]
    assert plan["modules"]["head"]["keep"]["in"] == kept_a + [4 + i for i in kept_b]  # b's channels start at 4
    assert small.head.in_channels == 5
    assert_outputs_close(outputs(small, x), outputs(masked_reference(model, plan), x))


def test_flatten_into_linear_removes_a_block_of_features_per_channel():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 3 * 3, 2)).eval()
    x = torch.randn(2, 1, 3, 3)
    small = prune(model, x, ratio=0.5, granularity="channel", criterion="l2", scope="local")
    kept = get_plan(small)["modules"]["0"]["keep"]["out"]
    cols = get_plan(small)["modules"]["3"]["keep"]["in"]
    assert cols == [c * 9 + k for c in kept for k in range(9)]
    assert_outputs_close(outputs(small, x), outputs(masked_reference(model, get_plan(small)), x))


class HardCoded(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.fc = nn.Conv2d(3, 4, 3, padding=1), nn.Linear(4 * 4 * 4, 2)

    def forward(self, x):
        return self.fc(self.conv(x).view(-1, 64))


def test_hard_coded_reshape_is_left_out_with_its_reason():
    groups = groups_by_producer(HardCoded(), torch.randn(1, 3, 4, 4))
    conv = groups["conv"][0]
    assert conv["prunable"] == 0
    assert any("hard-coded reshape constant 64" in reason for _, reason in conv["left_out"])


class UnknownOp(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.head = nn.Conv2d(3, 4, 1), nn.Conv2d(4, 2, 1)

    def forward(self, x):
        y = self.conv(x)
        return self.head(torch.cumsum(y, dim=1))


def test_unknown_op_on_channels_is_left_out_and_named():
    groups = groups_by_producer(UnknownOp(), torch.randn(1, 3, 4, 4))
    conv = groups["conv"][0]
    assert conv["prunable"] == 0
    assert any("cumsum" in reason for _, reason in conv["left_out"])


class DataDependent(nn.Module):
    def __init__(self, cin: int = 3):
        super().__init__()
        self.conv = nn.Conv2d(cin, 4, 1)

    def forward(self, x):
        y = self.conv(x)
        if y.sum() > 0:
            return y
        return -y


def test_untraceable_forward_raises_trace_error_naming_the_line_and_workaround():
    with pytest.raises(TraceError) as info:
        prune(DataDependent(), torch.randn(1, 3, 4, 4), granularity="channel", criterion="l2", scope="local")
    msg = str(info.value)
    assert "if y.sum() > 0" in msg and "leaf" in msg and "ignore" in msg


class Wrapper(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem, self.odd = nn.Conv2d(3, 4, 1), DataDependent(4)
        self.head = nn.Sequential(nn.Conv2d(4, 6, 1), nn.ReLU(), nn.Conv2d(6, 2, 1))

    def forward(self, x):
        return self.head(self.odd(self.stem(x)))


def test_untraceable_submodule_is_kept_whole_and_listed():
    torch.manual_seed(0)
    model, x = Wrapper().eval(), torch.randn(1, 3, 4, 4)
    groups = describe_groups(model, x)
    opaque = [g for g in groups if g["kind"] == "opaque"][0]
    assert [name for name, _ in opaque["left_out"]] == ["odd"]
    small = prune(model, x, ratio=0.5, granularity="channel", criterion="l2", scope="local")
    assert small.odd.conv.out_channels == 4 and small.stem.out_channels == 4  # both touch the opaque module
    assert small.head[0].out_channels == 3
    assert_outputs_close(outputs(small, x), outputs(masked_reference(model, get_plan(small)), x))


class ChannelLast(nn.Module):
    """(N, C, L) conv, transposed to (N, L, C) for a Linear over channels, then back."""

    def __init__(self):
        super().__init__()
        self.conv, self.mix, self.head = nn.Conv1d(2, 6, 3, padding=1), nn.Linear(6, 5), nn.Conv1d(5, 3, 1)

    def forward(self, x):
        y = self.mix(self.conv(x).transpose(1, 2)).permute(0, 2, 1)
        return self.head(F.gelu(y))


def test_transpose_and_permute_follow_the_channel_dim():
    torch.manual_seed(0)
    model, x = ChannelLast().eval(), torch.randn(2, 2, 7)
    small = prune(model, x, ratio=0.5, granularity="channel", criterion="l2", scope="local")
    assert (small.conv.out_channels, small.mix.in_features, small.mix.out_features, small.head.in_channels) == (3, 3, 3, 3)
    assert_outputs_close(outputs(small, x), outputs(masked_reference(model, get_plan(small)), x))


def test_every_handler_is_registered_by_name_and_found_by_type():
    for name in ("conv", "linear", "batchnorm", "groupnorm", "layernorm", "prelu", "embedding", "multihead_attention"):
        assert name in LAYER_HANDLERS
    assert handler_for(nn.ConvTranspose2d(2, 2, 1)) is LAYER_HANDLERS.get("conv")
    assert handler_for(nn.LSTM(2, 2)) is None


class ShapeBranch(nn.Module):
    """Python control flow on a shape: torch.fx cannot trace it, torch.export (non-strict) can."""

    def __init__(self):
        super().__init__()
        self.conv, self.bn, self.head = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Conv2d(8, 2, 1)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        if y.shape[-1] > 4:
            y = F.max_pool2d(y, 2)
        return self.head(y).flatten(1)


def test_torch_export_fallback_when_fx_cannot_trace():
    torch.manual_seed(0)
    model, x = ShapeBranch().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(Exception):
        torch.fx.symbolic_trace(model)
    small = prune(model, x, ratio=0.5, granularity="channel", criterion="l2", scope="local")
    assert small.conv.out_channels == 4 and small.bn.num_features == 4 and small.head.in_channels == 4
    assert_outputs_close(outputs(small, x), outputs(masked_reference(model, get_plan(small)), x))


def test_tracer_fx_never_falls_back_to_torch_export():
    from prunekit.graph.capture import capture

    model, x = ShapeBranch().eval(), torch.randn(2, 3, 8, 8)
    with pytest.raises(TraceError, match=r"torch.fx cannot trace ShapeBranch.forward.*y.shape\[-1\] > 4.*tracer='fx'"):
        capture(model, x, tracer="fx")
    assert capture(model, x, tracer="auto").exported
    assert not capture(nn.Sequential(nn.Conv2d(3, 4, 3)), x, tracer="fx").exported


def test_attention_heads_are_removed_whole_and_head_counts_updated():
    
    torch.manual_seed(0)
    for name, heads_before in [("vit_tiny", 2), ("bert_like", 4)]:
        entry = ZOO.get(name)
        model, x = entry.build().eval(), entry.example_inputs()
        small = prune(model, x, ratio=0.5, granularity="channel", criterion="l2", scope="local")
        if name == "vit_tiny":
            attn = small.blocks[0].attn
            assert (attn.num_heads, attn.head_dim, attn.embed_dim) == (1, 8, 8)
            assert attn.in_proj_weight.shape == (24, 8) and attn.out_proj.weight.shape == (8, 8)
        else:
            att = small.layers[0].attention
            assert (att.num_heads, att.head_dim) == (heads_before // 2, 4)
            assert att.query.out_features == att.key.out_features == att.value.out_features == att.out.in_features == 8
            kept = get_plan(small)["modules"]["layers.0.attention.query"]["keep"]["out"]
            assert len({k // 4 for k in kept}) == 2 and len(kept) == 8  # two whole heads of 4
        assert_outputs_close(outputs(small, x), outputs(masked_reference(model, get_plan(small)), x))


class DictIO(nn.Module):
    """Keyword inputs and a dict output: channels that reach any output entry must stay."""

    def __init__(self):
        super().__init__()
        self.a, self.b, self.fc = nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 4, 1), nn.Linear(4, 2)

    def forward(self, x, scale=None):
        y = self.b(torch.relu(self.a(x)))
        if scale is not None:
            y = y * scale
        return {"logits": self.fc(y.mean((2, 3))), "features": y}


def test_dict_inputs_and_outputs():
    torch.manual_seed(0)
    model, x = DictIO().eval(), {"x": torch.randn(2, 3, 6, 6), "scale": torch.tensor(2.0)}
    small = prune(model, x, ratio=0.5, granularity="channel", criterion="l2", scope="local")
    assert small.a.out_channels == 4 and small.b.out_channels == 4  # b's channels are the 'features' output
    got, ref = small(**x), masked_reference(model, get_plan(small))(**x)
    assert got["features"].shape == ref["features"].shape
    torch.testing.assert_close(got["logits"], ref["logits"], atol=1e-5, rtol=1e-5)


class TiedLM(nn.Module):
    """Embedding and output head share one weight (vocab x dim); the hidden width is prunable."""

    def __init__(self, vocab: int = 11, dim: int = 8):
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 12), nn.ReLU(), nn.Linear(12, dim))
        self.head = nn.Linear(dim, vocab, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, ids):
        h = self.embed(ids)
        return self.head(h + self.mlp(h))


def test_tied_weights_stay_tied_after_pruning():
    torch.manual_seed(0)
    model, ids = TiedLM().eval(), torch.randint(0, 11, (2, 5))
    small = prune(model, ids, ratio=0.5, granularity="channel", criterion="l2", scope="local")
    assert small.head.weight is small.embed.weight and small.embed.weight.shape == (11, 4)
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters())
    assert_outputs_close(outputs(small, ids), outputs(masked_reference(model, get_plan(small)), ids))
    fresh = apply_plan(TiedLM(), get_plan(small))
    fresh.load_state_dict(small.state_dict())
    assert fresh.head.weight is fresh.embed.weight
    assert_outputs_close(outputs(fresh, ids), outputs(small, ids), atol=0, rtol=0)
