"""A plain callable is a channel criterion: ``fn(group) -> one score per channel``, ``group`` a read-only GroupView.

The built-in "l1" written by hand over the view (per layer: L1 of each channel's slices, normalised by the layer's
mean, then averaged over the layers) prunes every model exactly like "l1"; the view holds each coupled layer's
parameters restricted to the group, channel axis first; wrong results and the wrong call form are PruningErrors.
"""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import PruningError
from prunekit.graph.groups import build_graph
from prunekit.importance import GroupView, create_criterion
from prunekit.structured import handler_for

from zoo import ZOO


def hand_l1(group):
    """The built-in l1 channel criterion (reduction="mean", normalize="mean"), written against the GroupView."""
    rows = []
    for m in group.members:
        per_row = sum(t.abs().reshape(len(t), -1).sum(1).double() for t in m.params.values())
        v = m.to_channels(per_row)  # mean over a channel's rows; NaN where the layer holds none of it
        scale = v.abs().nanmean()
        rows.append(v / scale if torch.isfinite(scale) and scale > 0 else v)
    return torch.stack(rows).nanmean(0).nan_to_num(0.0)


def producer_l1(group):
    """The docstring example of prunekit.importance.views: L1 of the producers' rows only."""
    scores = torch.zeros(len(group), dtype=torch.float64)
    for m in group.producers:
        rows = m.params["weight"].abs().flatten(1).sum(1)
        scores += m.to_channels(rows).nan_to_num()
    return scores


def conv_net():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1),
                          nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5)).eval()
    with torch.no_grad():
        for bn in (model[1], model[4]):
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return model, torch.randn(2, 3, 6, 6)


def zoo(name):
    torch.manual_seed(0)
    entry = ZOO.get(name)
    return entry.build().eval(), entry.example_inputs()


def assert_same_model(a: nn.Module, b: nn.Module):
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].shape == sb[key].shape, key
        torch.testing.assert_close(sa[key], sb[key], rtol=0, atol=0, msg=key)


ZOO_MODELS = ["resnet_basic", "mobilenetv2", "bert_like", "vit_tiny"]


@pytest.mark.parametrize("build", [conv_net] + [lambda name=name: zoo(name) for name in ZOO_MODELS],
                         ids=["conv_bn_flatten"] + ZOO_MODELS)
@pytest.mark.parametrize("scope", ["local", "global"])
def test_a_hand_written_l1_prunes_exactly_like_the_built_in(build, scope):
    model, x = build()
    by_hand = prunekit.prune(model, x, granularity="channel", criterion=hand_l1, ratio=0.4, scope=scope)
    built_in = prunekit.prune(model, x, granularity="channel", criterion="l1", ratio=0.4, scope=scope)
    assert sum(p.numel() for p in by_hand.parameters()) < sum(p.numel() for p in model.parameters())
    assert_same_model(by_hand, built_in)


def test_hand_scores_equal_the_built_in_scores_group_by_group():
    model, x = zoo("vit_tiny")  # nn.MultiheadAttention: in_proj_bias holds the q, k and v entries of each channel
    graph = build_graph(model, x, module_rule=handler_for)
    crit, l1 = create_criterion(hand_l1), create_criterion("l1")
    groups = [g for g in graph.groups if len(g.prunable)]
    assert groups
    attn = [m for g in groups for m in GroupView(g, model).members if m.kind == "embed"]
    assert attn and all(m.params["in_proj_bias"].shape == (16, 3) for m in attn)  # (channel rows, q/k/v)
    assert all({"in_proj_weight:0", "in_proj_weight:1"} <= set(m.params) for m in attn)  # sliced along both axes
    assert all([(s.name, s.dim) for s in m.slices][:2] == [("in_proj_weight", 0), ("in_proj_weight", 1)] for m in attn)
    for g in groups:
        np.testing.assert_allclose(crit.group_scores(g, model=model), l1.group_scores(g, model=model), rtol=1e-6)


def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 3)).eval()
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[1.0, 1, 1, 1], [0.1, 0, 0, 0], [2, 2, 2, 2], [0, 0.2, 0, 0], [3, 0, 0, 0]]))
    return model, torch.randn(2, 4)


def test_the_docstring_example_keeps_the_largest_producer_rows():
    model, x = mlp()
    pruned = prunekit.prune(model, x, granularity="channel", criterion=producer_l1, ratio=0.4, scope="local")
    torch.testing.assert_close(pruned[0].weight, model[0].weight[[0, 2, 4]], rtol=0, atol=0)
    torch.testing.assert_close(pruned[2].weight, model[2].weight[:, [0, 2, 4]], rtol=0, atol=0)


def view_of(model, x):
    graph = build_graph(model, x, module_rule=handler_for)
    group = [g for g in graph.groups if len(g.prunable)][0]
    return GroupView(group, model, reduction="sum", normalize="none")


def test_the_view_holds_each_layer_restricted_to_the_group_channel_axis_first():
    model, x = mlp()
    view = view_of(model, x)
    assert len(view) == 5 and view.prunable.all() and view.reduction == "sum" and view.normalize == "none"
    members = {(m.module_name, m.kind): m for m in view.members}
    assert set(members) == {("0", "out"), ("2", "in")}
    producer, consumer = members[("0", "out")], members[("2", "in")]
    assert view.producers == (producer,) and producer.is_producer and not consumer.is_producer
    assert producer.module is model[0] and set(producer.params) == {"weight", "bias"}
    torch.testing.assert_close(producer.weight, model[0].weight.detach())
    torch.testing.assert_close(producer.params["bias"], model[0].bias.detach())
    torch.testing.assert_close(consumer.weight, model[2].weight.detach().t())  # columns of the consumer, axis first
    assert consumer.params.keys() == {"weight"}  # the consumer's bias is not coupled to the hidden channels
    assert producer.channels.tolist() == list(range(5))


def test_the_view_holds_several_rows_per_channel_after_a_flatten():
    model, x = conv_net()
    graph = build_graph(model, x, module_rule=handler_for)
    group = next(g for g in graph.groups if "7" in g.module_names())
    view = GroupView(group, model)
    linear = next(m for m in view.members if m.module_name == "7")
    assert linear.weight.shape == (6 * 16, 5) and len(view) == 6
    assert torch.bincount(linear.channels).tolist() == [16] * 6  # 4 x 4 input columns per conv channel
    rows = torch.arange(6 * 16, dtype=torch.float64)
    for reduce, fn in [("mean", torch.mean), ("sum", torch.sum), ("max", torch.max), ("min", torch.min)]:
        got = linear.to_channels(rows, reduce)
        want = torch.stack([fn(rows[linear.channels == c]) for c in range(6)])
        torch.testing.assert_close(got, want)


def test_the_view_is_read_only():
    model, x = mlp()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    view = view_of(model, x)
    member = view.members[0]
    member.weight.zero_()  # a copy: the model keeps its weights
    with pytest.raises(TypeError):
        member.params["weight"] = torch.zeros(1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        member.kind = "in"
    assert not member.weight.requires_grad
    for key, value in model.state_dict().items():
        torch.testing.assert_close(value, before[key], rtol=0, atol=0)


@pytest.mark.parametrize("fn,match", [
    (lambda g: torch.ones(len(g) + 1), r"shape \(6,\); expected \(5,\)"),
    (lambda g: torch.ones(len(g), 1), r"shape \(5, 1\)"),
    (lambda g: None, "returned None"),
    (lambda g: "high", "not numbers"),
    (lambda g: torch.tensor([1.0, float("nan"), 2, 3, 4]), r"NaN scores \(channels \[1\]\)"),
])
def test_a_wrong_result_is_a_pruning_error(fn, match):
    model, x = mlp()
    with pytest.raises(PruningError, match=match):
        prunekit.prune(model, x, granularity="channel", criterion=fn, ratio=0.4)


def test_any_array_like_result_and_infinities_are_accepted():
    model, x = mlp()
    keep_first = lambda g: [float("inf")] + [0.0] * (len(g) - 1)  # noqa: E731
    pruned = prunekit.prune(model, x, granularity="channel", criterion=keep_first, ratio=0.8, scope="local")
    torch.testing.assert_close(pruned[0].weight, model[0].weight[[0]], rtol=0, atol=0)
    as_numpy = lambda g: np.arange(len(g), dtype=np.float32)  # noqa: E731
    pruned = prunekit.prune(model, x, granularity="channel", criterion=as_numpy, ratio=0.4, scope="local")
    torch.testing.assert_close(pruned[0].weight, model[0].weight[[2, 3, 4]], rtol=0, atol=0)


def test_the_call_form_must_fit_the_granularity():
    model, x = mlp()
    with pytest.raises(PruningError, match=r"fn\(group\)"):
        prunekit.prune(model, x, granularity="channel", criterion=lambda name, w: w.abs(), ratio=0.4)
    with pytest.raises(PruningError, match=r"fn\(name, weight\)"):
        prunekit.prune(model, None, granularity="weight", criterion=hand_l1, ratio=0.4)
    # a weight callable still works for weight pruning
    pruned = prunekit.prune(model, None, granularity="weight", criterion=lambda name, w: w.abs(), ratio=0.4)
    assert int((pruned[0].weight == 0).sum()) > 0


def test_a_callable_reads_weights_only():
    crit = create_criterion(hand_l1)
    assert crit.needs == {"weights"} and not crit.needs_data
    assert "hand_l1" in repr(crit)
