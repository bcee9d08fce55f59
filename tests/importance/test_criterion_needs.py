"""Every registered criterion declares in ``needs`` what it reads, over the registry (a new entry is tested for free).

What a criterion does not declare it must not use: without "gradients" its scores are the same whether or not
it was shown gradients (and whatever ``.grad`` holds while it scores); without "activations" the same whether
or not it was shown activation statistics; without "inputs" the same whether or not it was shown layer inputs;
with neither "weights" nor data it scores the same on other weights. What it declares it needs: a data need
without calibration data is a PruningError (and, through prunekit.prune, a ConfigError naming calibration=), in
the loop and in scoring. A reconstructing criterion (sparsegpt) "scores" with what it builds from data: its
per-layer Hessians.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit.errors import ConfigError, PruningError
from prunekit.graph.groups import build_graph
from prunekit.importance import (ACTIVATIONS, CRITERIA, GRADIENTS, INPUTS, NEEDS, WEIGHTS, Criterion, calibrate,
                                 create_criterion)
from prunekit.structured import handler_for

NAMES = CRITERIA.names()


def supports(name: str, method: str) -> bool:
    return getattr(type(create_criterion(name)), method) is not getattr(Criterion, method)


def needs(name: str) -> frozenset:
    return create_criterion(name).needs


def mlp(seed: int = 0):
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[0].bias.uniform_(0.0, 0.5)  # hidden units fire: activation statistics are non-trivial
    return model


def data():
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(6, 5, generator=g), torch.randint(0, 3, (6,), generator=g)) for _ in range(2)]


def hidden_group(model):
    graph = build_graph(model, data()[0][0], module_rule=handler_for)
    return graph, [g for g in graph.groups if len(g.prunable)][0]


def calibrated(name, model, graph):
    """A fresh criterion, calibrated by the shared loop on what it declares."""
    crit = create_criterion(name)
    calibrate(crit, model, data(), graph=graph)
    return crit


def all_scores(crit, model, group) -> dict:
    """Every score the criterion gives on the model: per weight and per channel, as supported."""
    out = {}
    if crit.reconstructs:
        return {key: crit.hessian(key).numpy() for key in ("0.weight", "2.weight")}
    if type(crit).weight_scores is not Criterion.weight_scores:
        for key in ("0.weight", "2.weight"):
            out[key] = crit.weight_scores(key, model.get_parameter(key).detach()).detach().double().numpy()
    if type(crit).group_scores is not Criterion.group_scores:
        out["group"] = np.asarray(crit.group_scores(group, model=model, reduction="mean", normalize="none"), float)
    return out


def assert_same(a: dict, b: dict):
    assert a.keys() == b.keys() and a
    for key in a:
        np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def show_gradients(crit, model):
    """Gradient observations the criterion did not ask for, with .grad left populated while it scores."""
    params = list(model.named_parameters())
    for x, y in data():
        model.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        crit.observe(params)


@pytest.mark.parametrize("name", NAMES)
def test_needs_is_a_frozenset_of_known_inputs_and_needs_data_follows(name):
    crit = create_criterion(name)
    assert isinstance(crit.needs, frozenset) and crit.needs <= NEEDS
    assert crit.needs_data == bool(crit.needs & {GRADIENTS, ACTIVATIONS, INPUTS})
    with pytest.raises(AttributeError):
        crit.needs_data = not crit.needs_data  # derived, read-only


@pytest.mark.parametrize("name", [n for n in NAMES if GRADIENTS not in needs(n)])
def test_without_gradients_declared_gradients_change_nothing(name):
    model = mlp()
    graph, group = hidden_group(model)
    plain = all_scores(calibrated(name, model, graph), model, group)
    shown = calibrated(name, model, graph)
    show_gradients(shown, model)
    try:
        assert all(p.grad is not None for p in model.parameters())
        assert_same(plain, all_scores(shown, model, group))
    finally:
        model.zero_grad(set_to_none=True)


def _feed_activations(crit, group, g):
    for _ in range(3):
        crit.observe_activation(group.atoms, torch.rand(4, len(group.atoms), generator=g), 1)


def _feed_inputs(crit, group, g):
    crit.observe_input("0.weight", torch.rand(4, 5, generator=g))
    crit.observe_input("2.weight", torch.rand(4, 8, generator=g))


@pytest.mark.parametrize("need,feed,name", [(need, feed, n) for need, feed in ((ACTIVATIONS, _feed_activations),
                                                                               (INPUTS, _feed_inputs))
                                            for n in NAMES if need not in needs(n)])
def test_data_a_criterion_does_not_declare_changes_nothing(need, feed, name):
    model = mlp()
    graph, group = hidden_group(model)
    plain = all_scores(calibrated(name, model, graph), model, group)
    shown = calibrated(name, model, graph)
    feed(shown, group, torch.Generator().manual_seed(2))
    assert_same(plain, all_scores(shown, model, group))


@pytest.mark.parametrize("name", [n for n in NAMES if not needs(n)])
def test_a_criterion_needing_nothing_scores_the_same_on_other_weights(name):
    a, b = mlp(0), mlp(1)
    graph_a, group_a = hidden_group(a)
    graph_b, group_b = hidden_group(b)
    assert_same(all_scores(calibrated(name, a, graph_a), a, group_a), all_scores(calibrated(name, b, graph_b), b, group_b))


@pytest.mark.parametrize("name", [n for n in NAMES if needs(n) == {WEIGHTS}])
def test_a_weight_criterion_reads_the_weights(name):
    a, b = mlp(0), mlp(1)
    _, group_a = hidden_group(a)
    _, group_b = hidden_group(b)
    sa, sb = all_scores(create_criterion(name), a, group_a), all_scores(create_criterion(name), b, group_b)
    assert all(not np.array_equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", [n for n in NAMES if not create_criterion(n).needs_data])
def test_the_loop_runs_nothing_for_a_data_free_criterion(name):
    model = mlp()
    calls = []
    model.register_forward_hook(lambda *a: calls.append(1))
    assert calibrate(create_criterion(name), model, None) == 0
    assert calibrate(create_criterion(name), model, data()) == 0
    assert calls == []


@pytest.mark.parametrize("name", [n for n in NAMES if create_criterion(n).needs_data])
def test_a_data_criterion_without_data_raises(name):
    model = mlp()
    graph, group = hidden_group(model)
    crit = create_criterion(name)
    with pytest.raises(PruningError, match="calibration"):
        calibrate(crit, model, None, graph=graph)
    if supports(name, "group_scores"):
        with pytest.raises(PruningError, match="calibration"):
            crit.group_scores(group, model=model)
        with pytest.raises(PruningError, match="calibration"):
            prunekit.prune(model, data()[0][0], granularity="channel", criterion=name, ratio=0.5)
    if supports(name, "weight_scores"):
        with pytest.raises(PruningError, match="calibration"):
            crit.weight_scores("0.weight", model[0].weight.detach())
        with pytest.raises(PruningError, match="calibration"):
            prunekit.prune(model, None, granularity="weight", criterion=name, ratio=0.5)
        with pytest.raises(ConfigError, match="calibration="):
            prunekit.prune(model, None, granularity="weight", criterion=name, ratio=0.5)


@pytest.mark.parametrize("name", [n for n in NAMES if create_criterion(n).needs_data])
def test_a_data_criterion_scores_from_what_the_loop_feeds(name):
    """Calibrated by the loop on its declared needs alone, it scores; the loop fed what it declared."""
    model = mlp()
    graph, group = hidden_group(model)
    crit = create_criterion(name)
    seen = {"observe": 0, "observe_activation": 0, "observe_input": 0}
    for method in seen:
        original = getattr(crit, method)

        def spy(*args, _original=original, _method=method):
            seen[_method] += 1
            return _original(*args)

        setattr(crit, method, spy)
    assert calibrate(crit, model, data(), graph=graph) == len(data())
    assert (seen["observe"] > 0) == (GRADIENTS in crit.needs)
    assert (seen["observe_activation"] > 0) == (ACTIVATIONS in crit.needs)
    assert (seen["observe_input"] > 0) == (INPUTS in crit.needs)
    scores = all_scores(crit, model, group)
    assert scores and all(np.isfinite(v).all() for v in scores.values())


def test_unknown_needs_are_refused_when_the_class_is_defined():
    with pytest.raises(ConfigError, match="unknown"):
        type("Bad", (Criterion,), {"needs": frozenset({"labels"})})
    with pytest.raises(ConfigError, match="set of"):
        type("Bad", (Criterion,), {"needs": "gradients"})
    ok = type("Ok", (Criterion,), {"needs": {"gradients", "weights"}})  # any iterable of names becomes a frozenset
    assert ok.needs == frozenset({GRADIENTS, WEIGHTS}) and ok().needs_data


def test_the_old_needs_data_declaration_still_gets_its_data():
    with pytest.warns(DeprecationWarning, match="needs = frozenset"):
        Old = type("Old", (Criterion,), {"needs_data": True})
    with pytest.warns(DeprecationWarning):
        OldAct = type("OldAct", (Criterion,), {"needs_data": True, "needs_activations": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert Old().needs == {WEIGHTS, GRADIENTS} and Old().needs_data
        assert OldAct().needs == {WEIGHTS, ACTIVATIONS} and OldAct().needs_data
        assert not hasattr(OldAct(), "needs_activations")
