"""Channel criteria: group scores against hand computations, and every criterion keeps the masked equivalence."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.errors import PruningError
from prunekit.graph.groups import build_graph
from prunekit.importance import CRITERIA, Criterion, create_criterion
from prunekit.structured import get_plan, handler_for
from prunekit.api import prune
from prunekit.structured.calibrate import calibrate

from structured_helpers import ZOO, assert_outputs_close, masked_reference, outputs

BUILT_IN = ["l1", "l2", "random", "bn_scale", "fpgm", "taylor", "activation", "apoz"]  # must stay registered


def scores_channels(name: str) -> bool:
    return type(create_criterion(name)).group_scores is not Criterion.group_scores


# over the registry: a newly registered channel criterion is tested by every parametrised test below
STRUCTURED = [n for n in CRITERIA.names() if scores_channels(n)]
NEEDS_DATA = [n for n in STRUCTURED if create_criterion(n).needs_data]


def mlp():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).eval()
    return model, torch.randn(8, 4)


def hidden_group(model, x):
    graph = build_graph(model, x, module_rule=handler_for)
    return graph, [g for g in graph.groups if len(g.prunable)][0]


def test_l1_and_l2_sum_the_slice_norms_of_all_coupled_layers():
    model, x = mlp()
    _, group = hidden_group(model, x)
    w1, b1, w2 = model[0].weight.detach(), model[0].bias.detach(), model[2].weight.detach()
    l1 = create_criterion("l1").group_scores(group, model=model, reduction="sum", normalize="none")
    l2 = create_criterion("l2").group_scores(group, model=model, reduction="sum", normalize="none")
    np.testing.assert_allclose(l1, (w1.abs().sum(1) + b1.abs() + w2.abs().sum(0)).double().numpy(), rtol=1e-6)
    np.testing.assert_allclose(l2, (w1.norm(dim=1) + b1.abs() + w2.norm(dim=0)).double().numpy(), rtol=1e-6)


def test_per_layer_normalisation_then_reduction():
    model, x = mlp()
    _, group = hidden_group(model, x)
    w1, b1, w2 = model[0].weight.detach(), model[0].bias.detach(), model[2].weight.detach()
    a = (w1.norm(dim=1) + b1.abs()).double()
    b = w2.norm(dim=0).double()
    a, b = a / a.mean(), b / b.mean()
    crit = create_criterion("l2")
    for reduction, expect in [("mean", (a + b) / 2), ("max", torch.maximum(a, b)), ("prod", a * b), ("sum", a + b)]:
        got = crit.group_scores(group, model=model, reduction=reduction, normalize="mean")
        np.testing.assert_allclose(got, expect.numpy(), rtol=1e-6)


def test_fpgm_scores_are_distance_sums_between_filters():
    model, x = mlp()
    _, group = hidden_group(model, x)
    w1 = model[0].weight.detach().double()
    expect = torch.cdist(w1, w1).sum(1)
    got = create_criterion("fpgm").group_scores(group, model=model, normalize="none")
    np.testing.assert_allclose(got, expect.numpy(), rtol=1e-6)


def test_bn_scale_removes_the_smallest_gammas():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Conv2d(6, 2, 1)).eval()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([0.9, -0.1, 0.5, 0.05, -2.0, 0.3]))
    small = prune(model, torch.randn(1, 3, 6, 6), criterion="bn_scale", ratio=0.5, granularity="channel", scope="local")
    assert get_plan(small)["modules"]["0"]["keep"]["out"] == [0, 2, 4]


def test_random_is_seeded():
    model, x = vgg_like()
    a = get_plan(prune(model, x, criterion="random", seed=1, granularity="channel", scope="local"))["params"]
    b = get_plan(prune(model, x, criterion="random", seed=1, granularity="channel", scope="local"))["params"]
    c = get_plan(prune(model, x, criterion="random", seed=2, granularity="channel", scope="local"))["params"]
    assert a == b and a != c


def vgg_like():
    torch.manual_seed(0)
    entry = ZOO.get("vgg")
    return entry.build().eval(), entry.example_inputs()


def test_taylor_is_mean_abs_weight_times_gradient():
    model, x = mlp()
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    batches = [(x[:4], y[:4]), (x[4:], y[4:])]
    graph, group = hidden_group(model, x)
    crit = create_criterion("taylor")
    calibrate(crit, model, graph, batches, None)
    got = crit.group_scores(group, model=model, reduction="sum", normalize="none")
    total = torch.zeros(5, dtype=torch.float64)
    for xb, yb in batches:
        ref = [p.detach().clone().requires_grad_() for p in model.parameters()]
        loss = F.cross_entropy(F.linear(F.relu(F.linear(xb, ref[0], ref[1])), ref[2], ref[3]), yb)
        g = torch.autograd.grad(loss, ref)
        total += ((ref[0] * g[0]).abs().sum(1) + (ref[1] * g[1]).abs() + (ref[2] * g[2]).abs().sum(0)).double().detach()
    np.testing.assert_allclose(got, (total / 2).numpy(), rtol=1e-5)
    assert all(p.grad is None for p in model.parameters())  # calibration leaves no gradients behind


@pytest.mark.parametrize("name", NEEDS_DATA)
def test_data_criteria_without_calibration_raise(name):
    model, x = mlp()
    with pytest.raises(PruningError, match="calibration"):
        prune(model, x, criterion=name, granularity="channel", scope="local")


def test_apoz_and_mean_activation_follow_the_relu_outputs():
    model, x = mlp()
    with torch.no_grad():
        model[0].bias[[1, 3]] = -100.0  # hidden units 1 and 3 never fire
    batches = [(x, torch.zeros(len(x), dtype=torch.long))]
    hidden = F.relu(model[0](x)).detach().double()
    for name, stat in [("apoz", 1 - (hidden == 0).double().mean(0)), ("activation", hidden.abs().mean(0))]:
        graph, group = hidden_group(model, x)
        crit = create_criterion(name)
        calibrate(crit, model, graph, batches, None)
        np.testing.assert_allclose(crit.group_scores(group, model=model), stat.numpy(), rtol=1e-6)
        small = prune(model, x, criterion=name, ratio=0.4, calibration=batches, granularity="channel", scope="local")
        assert 1 not in get_plan(small)["modules"]["0"]["keep"]["out"]
        assert 3 not in get_plan(small)["modules"]["0"]["keep"]["out"]


@pytest.mark.parametrize("criterion", STRUCTURED)
@pytest.mark.parametrize("name", ["resnet_basic", "mobilenetv2", "bert_like"])
def test_every_criterion_prunes_to_the_masked_model(criterion, name):
    torch.manual_seed(0)
    entry = ZOO.get(name)
    model, x = entry.build().eval(), entry.example_inputs()
    with torch.no_grad():
        n_out = model(x).shape[-1]
    calib = [(x, torch.arange(len(x)) % n_out)]
    small = prune(model, x, criterion=criterion, ratio=0.5, calibration=calib, granularity="channel", scope="local")
    assert_outputs_close(outputs(small, x), outputs(masked_reference(model, get_plan(small)), x))


def test_all_structured_criteria_are_registered():
    assert set(BUILT_IN) <= set(STRUCTURED)  # the built-ins are registered and score channels
    assert set(NEEDS_DATA) >= {"taylor", "activation", "apoz"}


@pytest.mark.parametrize("criterion", STRUCTURED)
def test_every_criterion_removes_the_lowest_scoring_channels(criterion):
    """Local scope on one group: exactly round(ratio * n) channels go, and each removed channel scores no higher
    than any kept one, with the scores from the criterion's own group_scores after calibration."""
    torch.manual_seed(0)
    model, x = nn.Sequential(nn.Linear(4, 10), nn.ReLU(), nn.Linear(10, 2)).eval(), torch.randn(8, 4)
    with torch.no_grad():
        model[0].bias.uniform_(0.0, 0.5)  # hidden units fire (activation criteria see non-zero statistics)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    batches = [(x, y)]
    graph, group = hidden_group(model, x)
    crit = create_criterion(criterion)
    if crit.needs_data:
        calibrate(crit, model, graph, batches, None)
    scores = np.asarray(crit.group_scores(group, model=model, reduction="mean", normalize="mean"), dtype=float)
    small = prune(model, x, criterion=criterion, ratio=0.4, scope="local", calibration=batches, granularity="channel")
    kept = np.asarray(get_plan(small)["modules"]["0"]["keep"]["out"])
    removed = np.setdiff1d(np.arange(10), kept)
    assert len(removed) == round(0.4 * 10) and small[0].out_features == len(kept)
    assert scores[removed].max() <= scores[kept].min()
    assert_outputs_close(outputs(small, x), outputs(masked_reference(model, get_plan(small)), x))
