"""latency_allocation="measured": candidate widths priced by running the pruned copy, not by the criterion's scores.

References: a ReLU chain in which removing a hidden channel is the same as zeroing its row and bias (the next layer
then sees a zero), so the damage of a cut is computed by hand on the dense model; and a model whose highest-scoring
channels are dead (the next layer's weights on them are zero), which the scores allocation keeps and the measured one
cuts first. Layer times come from the fake WidthTimer (proportional to MACs), so nothing here depends on the load.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

import prunekit
from prunekit.errors import ConfigError, PruningError
from prunekit.structured import latency_timing as ltm
from prunekit.structured.latency import latency_report
from prunekit.structured.latency_damage import MeasuredDamage
from structured.latency_helpers import WidthTimer

X = (torch.randn(16, 32, generator=torch.Generator().manual_seed(1)),)
CAL = [(torch.randn(16, 32, generator=torch.Generator().manual_seed(s)),) for s in range(3)]


@pytest.fixture(autouse=True)
def fake_timer(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(ltm, "interleaved_median", WidthTimer())


def dead_channel_model() -> nn.Module:
    """fc2's channels all score above fc1's and fc3's (weights x5 / x10), but fc3 ignores fc2's channels 32..63."""
    torch.manual_seed(0)
    m = nn.Sequential()
    for name, layer in (("fc1", nn.Linear(32, 64)), ("a1", nn.ReLU()), ("fc2", nn.Linear(64, 64)), ("a2", nn.ReLU()),
                        ("fc3", nn.Linear(64, 64)), ("a3", nn.ReLU()), ("head", nn.Linear(64, 10))):
        m.add_module(name, layer)
    with torch.no_grad():
        m.fc2.weight[:32].mul_(10.0)
        m.fc2.weight[32:].mul_(5.0)  # the dead channels score lowest within fc2, still above every other layer
        m.fc3.weight[:, 32:] = 0.0
    return m.eval()


def prune(model, allocation, **kw):
    return prunekit.prune(model, X, granularity="channel", latency_target=0.7, normalize="none", ignore=["head"],
                          latency_allocation=allocation, latency_checks=0, **kw)


def test_measured_allocation_cuts_the_dead_channels_the_scores_allocation_keeps():
    by_scores = prune(dead_channel_model(), "scores")
    by_damage = prune(dead_channel_model(), "measured", calibration=CAL)
    # by score, fc2's channels are the last to go: the cut falls on fc1 / fc3 and every dead channel stays
    assert by_scores.fc2.out_features == 64
    assert int((by_scores.fc3.weight.abs().sum(0) == 0).sum()) == 32
    # measured, the dead channels cost nothing: fc2 is cut, all 32 dead channels go, fc1 and fc3 are untouched
    assert by_damage.fc2.out_features <= 32 and by_damage.fc1.out_features == 64
    assert by_damage.fc3.in_features == by_damage.fc2.out_features
    assert int((by_damage.fc3.weight.abs().sum(0) == 0).sum()) == 0
    report = latency_report(by_damage)
    assert report["predicted_ms"] <= report["aim_ms"]
    summary = report["allocation"]
    assert summary["allocation"] == "measured" and summary["batches"] == len(CAL)
    assert summary["measure"] == "output change" and summary["candidates"] > 0
    assert latency_report(by_scores)["allocation"] == {"allocation": "scores"}


def hidden_cut(model, rows):
    """The dense model with fc2's ``rows`` zeroed (weight and bias): the same function as removing those channels."""
    ref = dead_channel_model()
    ref.load_state_dict(model.state_dict())
    with torch.no_grad():
        ref.fc2.weight[rows] = 0.0
        ref.fc2.bias[rows] = 0.0
    return ref


def fc2_group(plan):
    (g,) = [g for g in plan.groups if "fc2" in g.layers]
    return g.index, np.asarray(plan._layout["group_atoms"][g.index])


@pytest.mark.parametrize("with_loss", [False, True])
def test_a_candidates_damage_equals_the_hand_computed_one(with_loss):
    model = dead_channel_model()
    with torch.no_grad():
        model.fc3.weight.normal_()  # every channel alive now: each cut changes the output
    plan = prunekit.plan(model, X, granularity="channel", ratio=0.0)
    gi, atoms = fc2_group(plan)
    rows = [0, 5, 40, 63]
    labels = [torch.randint(0, 10, (16,), generator=torch.Generator().manual_seed(7 + i)) for i in range(len(CAL))]
    batches = [(x, y) for (x,), y in zip(CAL, labels)] if with_loss else CAL
    damage = MeasuredDamage(model, plan, batches, F.cross_entropy if with_loss else None)
    got = damage(gi, atoms[rows])
    ref = hidden_cut(model, rows)
    with torch.no_grad():
        if with_loss:
            want = np.mean([float(F.cross_entropy(ref(x), y) - F.cross_entropy(model(x), y))
                            for (x, y) in batches])
        else:
            num = sum(float(((ref(x) - model(x)) ** 2).sum()) for (x,) in batches)
            want = num / sum(float((model(x) ** 2).sum()) for (x,) in batches)
    assert got == pytest.approx(want, rel=1e-4, abs=1e-9)
    assert damage(gi, atoms[[]]) == 0.0 and damage.evaluated == 1  # the empty cut is free, nothing was run
    assert damage(gi, atoms[rows[::-1]]) == got and damage.evaluated == 1  # memoised, whatever the order
    assert plan.group(gi).remove == []  # the plan is left as it was given


def test_measured_allocation_needs_a_latency_target_and_calibration():
    with pytest.raises(ConfigError, match="latency_target"):
        prunekit.prune(dead_channel_model(), X, granularity="channel", ratio=0.3, latency_allocation="measured")
    with pytest.raises(ConfigError, match="latency_allocation must be"):
        prune(dead_channel_model(), "loss")
    with pytest.raises(PruningError, match="calibration"):
        prune(dead_channel_model(), "measured")


def test_a_pruned_copy_with_other_output_shapes_is_refused_with_the_remedy():
    from prunekit.structured.latency_damage import output_change

    with pytest.raises(PruningError, match="loss_fn"):
        output_change(torch.zeros(2, 3), torch.zeros(2, 4))
    num, den = output_change({"a": torch.ones(2), "n": torch.tensor([3])}, {"a": torch.zeros(2), "n": torch.tensor([1])})
    assert (num, den) == (2.0, 0.0)  # the integer tensor is not an output to compare
