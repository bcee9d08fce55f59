"""Choosing channels: ratios, overrides, ignore, global floor, round_to, never-empty, MACs targets, errors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from prunekit.errors import PruningError
from prunekit.measure import count_macs
from prunekit.structured import get_plan, handler_for
from prunekit.api import prune

from structured_helpers import ZOO, assert_outputs_close, masked_reference, outputs


def vgg():
    torch.manual_seed(0)
    entry = ZOO.get("vgg")
    return entry.build().eval(), entry.example_inputs()


def widths(model):
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


@pytest.mark.parametrize("ratio", [1.0, -0.1, 1.5])
def test_ratio_outside_unit_interval_raises(ratio):
    model, x = vgg()
    with pytest.raises(PruningError, match="ratio"):
        prune(model, x, ratio=ratio, granularity="channel", criterion="l2", scope="local")


def test_local_ratio_removes_that_fraction_of_every_group():
    model, x = vgg()
    small = prune(model, x, ratio=0.25, granularity="channel", criterion="l2", scope="local")
    assert widths(small) == [6, 6, 12]  # 8, 8, 16 minus floor(25%)


def test_layer_ratio_override_and_ignore():
    model, x = vgg()
    small = prune(model, x, ratio=0.5, layer_ratios={"1.0": 0.75}, granularity="channel", criterion="l2", scope="local")
    assert widths(small) == [4, 2, 8]
    # ignore keeps the layer's outputs; its input channels (the previous layer's outputs) may still go
    small = prune(model, x, ratio=0.5, ignore=["3.0"], granularity="channel", criterion="l2", scope="local")
    assert widths(small) == [4, 4, 16] and small[3][0].in_channels == 4
    # freeze leaves the layer untouched, so the layer feeding it keeps its outputs too
    small = prune(model, x, ratio=0.5, freeze=["3.0"], granularity="channel", criterion="l2", scope="local")
    assert widths(small) == [4, 8, 16]
    small = prune(model, x, ratio=0.5, inplace=False, freeze=[model[3][0]], granularity="channel", criterion="l2", scope="local")  # a module instance
    assert widths(small) == [4, 8, 16]


def test_ignore_by_type_keeps_outputs_and_freeze_keeps_the_layers_untouched():
    model, x = vgg()
    # ignore: the Linear keeps its 24 outputs, but it reads fewer channels of the last conv (Torch-Pruning's meaning)
    small = prune(model, x, ratio=0.5, ignore=[nn.Linear], granularity="channel", criterion="l2", scope="local")
    assert small[6].in_features == 8 * 4 * 4 and small[6].out_features == 24
    assert widths(small) == [4, 4, 8]
    small = prune(model, x, ratio=0.5, freeze=[nn.Linear], granularity="channel", criterion="l2", scope="local")
    assert small[6].in_features == 16 * 4 * 4 and small[6].out_features == 24
    assert widths(small) == [4, 4, 16]  # the last conv feeds the frozen Linear


def test_ignore_matching_everything_raises():
    model, x = vgg()
    with pytest.raises(PruningError):
        prune(model, x, ratio=0.5, ignore=["*"], granularity="channel", criterion="l2", scope="local")


@pytest.mark.parametrize("round_to", [4, 8])
def test_round_to_keeps_multiples(round_to):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 24, 3), nn.ReLU(), nn.Conv2d(24, 40, 3), nn.ReLU(), nn.Conv2d(40, 2, 1)).eval()
    small = prune(model, torch.randn(1, 3, 8, 8), ratio=0.3, round_to=round_to, granularity="channel", criterion="l2", scope="local")
    kept = [small[0].out_channels, small[2].out_channels]
    assert all(k % round_to == 0 for k in kept)
    assert kept == [min(24, math.ceil((24 - int(24 * 0.3)) / round_to) * round_to),
                    min(40, math.ceil((40 - int(40 * 0.3)) / round_to) * round_to)]


def test_a_layer_is_never_emptied():
    model, x = vgg()
    small = prune(model, x, ratio=0.99, granularity="channel", criterion="l2", scope="local")
    assert widths(small) == [1, 1, 1]
    small = prune(model, x, ratio=0.99, scope="global", layer_floor=0.0, granularity="channel", criterion="l2")
    assert min(widths(small)) >= 1


def test_global_ranking_respects_the_floor_and_the_total():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 10, 3), nn.ReLU(), nn.Conv2d(10, 10, 3), nn.ReLU(), nn.Conv2d(10, 2, 1)).eval()
    with torch.no_grad():
        model[0].weight.mul_(0.01)  # the first layer is globally the least important
    small = prune(model, torch.randn(1, 3, 8, 8), ratio=0.5, scope="global", layer_floor=0.3,
                             normalize="none", granularity="channel", criterion="l2")
    assert small[0].out_channels == 3  # down to its floor (30% of 10)
    assert small[0].out_channels + small[2].out_channels == 10  # 50% of the 20 channels removed in total


@pytest.mark.parametrize("target", [0.5, 0.3])
def test_macs_target_fraction_is_met(target):
    model, x = vgg()
    before = count_macs(model, x)["macs"]
    small = prune(model, x, macs_target=target, granularity="channel", criterion="l2", scope="local")
    after = count_macs(small, x)["macs"]
    assert after <= target * before
    assert after >= 0.6 * target * before  # not far below: the search stops near the target
    assert_outputs_close(outputs(small, x), outputs(masked_reference(model, get_plan(small)), x))


def test_macs_target_absolute_count():
    model, x = vgg()
    goal = count_macs(model, x)["macs"] // 2
    small = prune(model, x, macs_target=goal, scope="global", granularity="channel", criterion="l2")
    assert count_macs(small, x)["macs"] <= goal


def test_impossible_macs_target_raises():
    model, x = vgg()
    with pytest.raises(PruningError, match="cannot be reached"):
        prune(model, x, macs_target=0.001, granularity="channel", criterion="l2", scope="local")


def test_grouped_conv_keeps_equal_channels_per_group():
    torch.manual_seed(0)
    entry = ZOO.get("resnext")
    model, x = entry.build().eval(), entry.example_inputs()
    small = prune(model, x, ratio=0.3, criterion="random", granularity="channel", scope="local")
    for m in small.modules():
        if isinstance(m, nn.Conv2d) and m.groups > 1:
            assert m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0 and m.in_channels < 16
    assert_outputs_close(outputs(small, x), outputs(masked_reference(model, get_plan(small)), x))


def test_groupnorm_loses_whole_groups():
    torch.manual_seed(0)
    entry = ZOO.get("groupnorm_cnn")
    small = prune(entry.build().eval(), entry.example_inputs(), ratio=0.5, granularity="channel", criterion="l2", scope="local")
    norms = [m for m in small.modules() if isinstance(m, nn.GroupNorm)]
    assert [(n.num_groups, n.num_channels) for n in norms] == [(2, 4), (2, 8)]


def test_inplace_modifies_and_returns_the_same_model():
    model, x = vgg()
    same = prune(model, x, ratio=0.5, inplace=True, granularity="channel", criterion="l2", scope="local")
    assert same is model and widths(model) == [4, 4, 8]


@pytest.mark.parametrize("kw", [{"ignore": ["features.9"]}, {"include": ["nope*"]}, {"layer_ratios": {"fc9": 0.5}}])
def test_patterns_matching_nothing_raise(kw):
    model, x = vgg()
    with pytest.raises(PruningError, match="matches no"):
        prune(model, x, ratio=0.5, **kw, granularity="channel")


@pytest.mark.parametrize("name", ZOO.names())
def test_graph_mac_count_equals_flop_counter(name):
    """The MACs budget is computed from traced shapes; it must agree with torch's FlopCounterMode (FLOPs / 2)."""
    from prunekit.graph import build_graph
    from prunekit.structured.budget import layer_macs

    entry = ZOO.get(name)
    model, x = entry.build().eval(), entry.example_inputs()
    assert layer_macs(build_graph(model, x, module_rule=handler_for))[0] == count_macs(model, x)["macs"]
