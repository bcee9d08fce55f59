"""prunekit.plan: a plan before surgery that equals prune, predicts sizes, edits, round-trips JSON, replays.

References: ``prunekit.prune`` on the same model (plan + apply must give the same tensors), the model
measured after surgery (predicted parameters / MACs), the original weights sliced by hand (edits).
"""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import prunekit
from prunekit import ConfigError, CheckpointError
from prunekit.measure import measure
from prunekit.structured import Plan, get_plan
from zoo import ZOO


def _tracer(entry) -> str:
    return "export" if entry.tracer == "export" else "auto"


def _same_tensors(a: nn.Module, b: nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert list(sa) == list(sb)
    for key in sa:
        assert sa[key].shape == sb[key].shape, key
        assert torch.equal(sa[key], sb[key]), key


@pytest.mark.parametrize("name", ZOO.names())
def test_plan_apply_equals_prune_and_predicts_the_sizes(name):
    entry = ZOO.get(name)
    model, x = entry.build().eval(), entry.example_inputs()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = prunekit.plan(model, x, granularity="channel", ratio=0.4, tracer=_tracer(entry))
    for k, v in model.state_dict().items():  # planning does not touch the model
        assert torch.equal(v, before[k]), k
    pruned = prunekit.prune(model, x, granularity="channel", ratio=0.4, tracer=_tracer(entry))
    applied = plan.apply(entry.build().eval(), x)  # replayed on a freshly built instance
    _same_tensors(applied, pruned)
    assert get_plan(applied)["modules"] == get_plan(pruned)["modules"]
    p, m = plan.predicted(), measure(pruned, x, latency=False)
    assert p["params_after"] == m["params"]
    assert p["macs_after"] == m["macs"]
    assert p["params_before"] == sum(t.numel() for t in model.parameters())
    # the JSON form applies to the same model
    again = Plan.from_json(plan.to_json()).apply(entry.build().eval(), x)
    _same_tensors(again, pruned)


def _convnet():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                         nn.Conv2d(8, 6, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(6, 3)).eval()


X = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(1))


def _group_of(plan: Plan, layer: str):
    return next(g for g in plan.groups if layer in g.layers)


def test_dropping_channels_by_index_removes_exactly_those_rows():
    model = _convnet()
    plan = prunekit.plan(model, X, granularity="channel", ratio=0.0)
    g = _group_of(plan, "0")
    assert g.size == 8 and g.remove == []
    plan.drop(g.index, [1, 5, 6])
    pruned = plan.apply(prunekit.clone_model(model), X)
    keep = torch.tensor([0, 2, 3, 4, 7])
    torch.testing.assert_close(pruned[0].weight, model[0].weight[keep], rtol=0, atol=0)
    torch.testing.assert_close(pruned[1].running_mean, model[1].running_mean[keep], rtol=0, atol=0)
    torch.testing.assert_close(pruned[3].weight, model[3].weight[:, keep], rtol=0, atol=0)
    plan.keep(g.index, [5])
    assert g.remove == [1, 6]


def test_set_ratio_removes_the_lowest_scoring_channels_like_layer_ratios():
    model = _convnet()
    plan = prunekit.plan(model, X, granularity="channel", ratio=0.0, criterion="l1")
    g = _group_of(plan, "3")  # the second conv's 6 output channels (read by the Linear)
    plan.set_ratio(g.index, 0.5)
    assert g.remove == sorted(sorted(range(6), key=lambda i: (g.scores[i], i))[:3])
    # the same selection the pruning pipeline makes for a per-layer ratio
    reference = prunekit.prune(model, X, granularity="channel", ratio=0.0, layer_ratios={"3": 0.5}, criterion="l1")
    _same_tensors(plan.apply(prunekit.clone_model(model), X), reference)


def test_bad_edits_are_refused_with_the_reason():
    model = _convnet()
    plan = prunekit.plan(model, X, granularity="channel", ratio=0.25)
    out = _group_of(plan, "7")  # the Linear's outputs reach the model output
    assert out.reason is not None or out.frozen
    with pytest.raises(ConfigError, match="model output|left out"):
        plan.drop(out.index, [0])
    g = _group_of(plan, "0")
    with pytest.raises(ConfigError, match="0..7"):
        plan.drop(g.index, [8])
    with pytest.raises(ConfigError, match="keep at least one"):
        plan.set_remove(g.index, list(range(8)))
    with pytest.raises(ConfigError, match="out of range"):
        plan.drop(len(plan.groups), [0])


def test_plan_json_file_round_trip_and_damage(tmp_path):
    model = _convnet()
    plan = prunekit.plan(model, X, granularity="channel", ratio=0.5)
    path = tmp_path / "plan.json"
    path.write_text(plan.to_json(indent=1))
    loaded = Plan.from_json(str(path))
    assert loaded.removed == plan.removed and loaded.predicted() == plan.predicted()
    data = json.loads(path.read_text())
    data["format"] = "something else"
    with pytest.raises(CheckpointError, match="not a prunekit plan"):
        Plan.from_dict(data)
    with pytest.raises(CheckpointError):
        Plan.from_json("{not json")
    other = nn.Sequential(nn.Conv2d(3, 4, 3))  # another architecture
    with pytest.raises(CheckpointError):
        loaded.apply(other)


def test_plan_table_lists_groups_and_totals():
    model = _convnet()
    plan = prunekit.plan(model, X, granularity="channel", ratio=0.5)
    text = str(plan)
    g = _group_of(plan, "0")
    assert f"{len(g.remove)} -> {g.kept}" in text
    p = plan.predicted()
    assert f"params {p['params_before']:,} -> {p['params_after']:,}" in text


def test_a_plan_with_a_gradient_criterion_leaves_the_model_and_its_grads_alone():
    model = _convnet()
    batches = [(X, torch.tensor([0, 1]))] * 2
    before = {k: v.clone() for k, v in model.state_dict().items()}
    plan = prunekit.plan(model, X, granularity="channel", ratio=0.5, criterion="taylor", calibration=batches)
    assert all(p.grad is None for p in model.parameters())
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k])
    pruned = prunekit.prune(model, X, granularity="channel", ratio=0.5, criterion="taylor", calibration=batches)
    _same_tensors(plan.apply(prunekit.clone_model(model), X), pruned)


def test_block_and_input_plans_equal_prune():
    from zoo import ZOO as zoo

    entry = zoo.get("resnet_basic")
    model, x = entry.build().eval(), entry.example_inputs()
    plan = prunekit.plan(model, x, granularity="block", ratio=0.5)
    g = plan.groups[0]
    assert g.kind == "blocks" and len(g.remove) == int(0.5 * g.size)
    pruned = prunekit.prune(model, x, granularity="block", ratio=0.5)
    _same_tensors(plan.apply(entry.build().eval(), x), pruned)
    assert plan.predicted()["params_after"] == sum(p.numel() for p in pruned.parameters())
    mlp = nn.Sequential(nn.Linear(10, 6), nn.ReLU(), nn.Linear(6, 2)).eval()
    xi = torch.randn(4, 10)
    plan = prunekit.plan(mlp, xi, granularity="input", ratio=0.3)
    assert len(plan.groups[0].remove) == 3
    pruned = prunekit.prune(mlp, xi, granularity="input", ratio=0.3)
    _same_tensors(plan.apply(prunekit.clone_model(mlp), xi), pruned)
    assert plan.predicted()["params_after"] == sum(p.numel() for p in pruned.parameters())


def test_weight_granularity_has_no_plan():
    with pytest.raises(ConfigError, match="structured"):
        prunekit.plan(_convnet(), X, granularity="weight")


@pytest.mark.parametrize("name", ZOO.names())
def test_an_edited_plan_predicts_what_surgery_gives(name):
    """Every other prunable group halved, the rest untouched: predicted sizes == the pruned model measured."""
    entry = ZOO.get(name)
    model, x = entry.build().eval(), entry.example_inputs()
    plan = prunekit.plan(model, x, granularity="channel", ratio=0.0, tracer=_tracer(entry))
    editable = [g for g in plan.groups if g.prunable and g.scores is not None]
    for g in editable[::2]:
        plan.set_ratio(g.index, 0.5)
    pruned = plan.apply(entry.build().eval(), x)
    p, m = plan.predicted(), measure(pruned, x, latency=False)
    assert (p["params_after"], p["macs_after"]) == (m["params"], m["macs"])
    if any(g.remove for g in plan.groups):
        assert m["params"] < p["params_before"]
