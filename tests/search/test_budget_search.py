"""Budget search, sensitivity and per-layer allocation on real weight pruning with synthetic accuracy curves."""
import pytest
import torch
from torch import nn

import prunekit
from prunekit.data.base import DataSplits
from prunekit.search import Recovery, budget_search, layerwise_search, sensitivity
from prunekit.train import FitConfig, fit
from prunekit.unstructured import effective, global_sparsity

EX = torch.randn(1, 6)


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 40), nn.ReLU(), nn.Linear(40, 30), nn.ReLU(), nn.Linear(30, 3))


def rec(data=None, **parts):
    """The default recovery on ``data``, with some parts replaced."""
    return Recovery.default(data, EX).with_(**parts)


def layer_sparsity(model, i):
    w = effective(model[i])
    return float((w == 0).float().mean())


def step_accuracy(model):
    """A 10-point cliff once global sparsity passes 0.637."""
    return {"accuracy": 0.90 if global_sparsity(model) <= 0.637 else 0.80}


def test_bisection_on_real_pruning_finds_the_known_threshold():
    res = budget_search(mlp(), rec(evaluate=step_accuracy), max_accuracy_drop=0.5, tol=0.002, max_probes=20)
    n = sum(m.weight.numel() for m in mlp() if isinstance(m, nn.Linear))
    assert 0.637 - 0.002 - 1 / n <= res.ratio <= 0.637 + 1 / n
    assert global_sparsity(res.model) == pytest.approx(res.ratio, abs=1 / n)
    assert res.best["ratio"] == res.ratio and res.best["nonzero_params"] < res.baseline["nonzero_params"]
    ratios = [p["ratio"] for p in res.probes]
    assert len(ratios) == len(set(ratios))  # cached: no ratio evaluated twice
    assert all(p["ok"] == (p["accuracy"] == 0.90) for p in res.probes)
    assert {"nonzero_macs", "params", "val_accuracy"} <= set(res.probes[0])


def test_macs_objective_and_no_feasible_ratio():
    res = budget_search(mlp(), rec(evaluate=step_accuracy), max_accuracy_drop=0.5, objective="macs", tol=0.01)
    feasible = [p for p in res.probes if p["ok"]]
    assert res.best["nonzero_macs"] == min(p["nonzero_macs"] for p in feasible)
    model = mlp()
    none = budget_search(model, rec(evaluate=step_accuracy), max_accuracy_drop=0.5, lo=0.7, hi=0.9, max_probes=3)
    assert none.best is None and none.ratio == 0.0 and none.model is model and "no probed ratio" in none.message


def test_interrupted_search_returns_best_so_far():
    calls = []

    def evaluate(m):
        calls.append(1)
        if len(calls) == 5:  # baseline, hi, then two midpoints, then Ctrl-C
            raise KeyboardInterrupt
        return step_accuracy(m)

    res = budget_search(mlp(), rec(evaluate=evaluate), max_accuracy_drop=0.5)
    assert res.interrupted and res.best is not None
    assert res.ratio == max(p["ratio"] for p in res.probes if p["ok"])
    assert global_sparsity(res.model) == pytest.approx(res.ratio, abs=0.01)


def sensitive_last_layer(model):
    """Layer 2 costs 10 points per unit ratio, others are free."""
    return {"accuracy": 0.9 - 0.1 * layer_sparsity(model, 2)}


def test_sensitivity_prunes_one_layer_at_a_time():
    seen = []

    def evaluate(m):
        seen.append([layer_sparsity(m, i) for i in (0, 2, 4)])
        return sensitive_last_layer(m)

    res = sensitivity(mlp(), rec(evaluate=evaluate), ratios=[0.25, 0.5])
    assert list(res.accuracy) == ["0", "2", "4"]
    # after the baseline, each probe prunes exactly one layer at exactly the ratio
    probes = seen[1:]
    assert len(probes) == 6
    for k, row in enumerate(probes):
        layer, ratio = divmod(k, 2)
        assert row == pytest.approx([[0.25, 0.5][ratio] if j == layer else 0.0 for j in range(3)], abs=0.01)
    assert res.drops["2"] == pytest.approx({0.25: 2.5, 0.5: 5.0})
    assert res.drops["0"] == {0.25: 0.0, 0.5: 0.0}
    assert res.ranking()[0]["layer"] == "2"
    assert res.sizes == {"0": 240, "2": 1200, "4": 90}


def test_layerwise_search_allocates_and_verifies():
    res = layerwise_search(mlp(), rec(evaluate=sensitive_last_layer), max_accuracy_drop=3.0, ratios=[0.25, 0.5, 0.9])
    assert res.best["layer_ratios"] == {"0": 0.9, "2": 0.25, "4": 0.9}
    assert layer_sparsity(res.model, 2) == pytest.approx(0.25, abs=0.01)
    assert layer_sparsity(res.model, 0) == pytest.approx(0.9, abs=0.01)
    assert res.best["ok"] and len(res.probes) == 1


def test_layerwise_search_shrinks_when_drops_do_not_add_up():
    def interacting(m):  # pruning layers 0 and 2 together costs extra points
        s0, s2 = layer_sparsity(m, 0), layer_sparsity(m, 2)
        return {"accuracy": 0.9 - 0.1 * s2 - (0.05 if s0 > 0.5 and s2 > 0 else 0.0)}

    res = layerwise_search(mlp(), rec(evaluate=interacting), max_accuracy_drop=3.0, ratios=[0.25, 0.5, 0.9])
    assert [p["ok"] for p in res.probes] == [False, True]
    assert res.probes[1]["allocation_budget"] == pytest.approx(1.5)
    assert res.best["drop_points"] <= 3.0


def test_budget_search_with_default_fit_and_evaluate():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 6, generator=g)
    y = (x[:, 0] > 0).long()
    data = DataSplits(x, y, x[:64], y[:64], x[:96], y[:96], num_classes=3)  # val != test: the budget uses val
    cfg = FitConfig(epochs=1, batch_size=64)

    def val_accuracy(m, split="val"):  # the reference evaluation: argmax on the validation split, by hand
        xs, ys = data.split(split)
        with torch.no_grad():
            return float((m.eval()(xs).argmax(1) == ys).float().mean())

    # the reference probe: prune a copy to 50% of all weights by global L1, then prunekit.train.fit with cfg
    twin = prunekit.prune(mlp(), EX, granularity="weight", criterion="l1", ratio=0.5, relative_to="total")
    fit(twin, data, cfg)
    base, acc = val_accuracy(mlp()), val_accuracy(twin)
    drop = (base - acc) * 100
    assert drop > 0  # seeded set-up: this probe costs accuracy, so the budget below is what decides
    res = budget_search(mlp(), Recovery.default(data, EX, finetune=cfg), max_accuracy_drop=drop, hi=0.5)
    assert res.baseline["val_accuracy"] == pytest.approx(base) and val_accuracy(mlp(), "test") != pytest.approx(base)
    assert res.ratio == 0.5 and [p["ok"] for p in res.probes] == [True]  # a drop of exactly the budget meets it
    assert res.best["val_accuracy"] == pytest.approx(acc) and res.best["drop_points"] == pytest.approx(drop)
    ours, ref = res.model.state_dict(), twin.state_dict()
    assert ours.keys() == ref.keys() and all(torch.equal(ours[k], ref[k]) for k in ref)  # the default fine-tune is fit
    # a budget half a validation sample below that drop rejects it: the probe is judged, not passed by default
    strict = budget_search(mlp(), Recovery.default(data, EX, finetune=cfg),
                           max_accuracy_drop=drop - 100 / len(data.y_val) / 2, hi=0.5, max_probes=1)
    assert [p["ok"] for p in strict.probes] == [False] and strict.best is None and strict.ratio == 0.0


@pytest.mark.parametrize("schedule", ["agp", "iterative"])
def test_gradual_schedules_reach_the_probed_ratio(schedule):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(128, 6, generator=g)
    y = (x[:, 0] > 0).long()
    data = DataSplits(x, y, x[:64], y[:64], x[:64], y[:64], num_classes=3)
    seen = []

    def evaluate(m):
        seen.append(global_sparsity(m))
        return {"accuracy": 0.9}

    recovery = Recovery.default(data, EX, finetune=FitConfig(epochs=2, batch_size=16)).with_(evaluate=evaluate)
    res = budget_search(mlp(), recovery, max_accuracy_drop=0.5, hi=0.6, schedule=schedule, rounds=2)
    assert res.ratio == 0.6 and global_sparsity(res.model) == pytest.approx(0.6, abs=0.01)
    if schedule == "iterative":  # two rounds on a cubic path were evaluated on the way
        assert seen[-4:] == pytest.approx([0.0, 0.6 * (1 - 0.5 ** 3), 0.6, 0.6], abs=0.01)
