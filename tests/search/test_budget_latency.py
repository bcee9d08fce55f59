"""budget_search(objective="latency"): probes pruned to a latency cut, their latency looked up in the dense table.

References: a fake timer whose times are a layer's widths (so the table is known by hand: a Linear costs
in/64 x out/64 ms, 1 ms dense); each probe's latency against that hand formula and against an independent lookup
of the dense table at the probe's widths; the chosen cut against the one computed by hand from an evaluate that
loses accuracy linearly with the cut.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from prunekit.errors import ConfigError
from prunekit.graph.groups import build_graph
from prunekit.schedule import Recovery
from prunekit.search import budget_search
from prunekit.sparse import timing
from prunekit.structured import latency_timing as ltm
from prunekit.structured.handlers import handler_for
from prunekit.structured.latency import latency_measure_fn, latency_prune_fn
from structured.latency_helpers import WidthTimer

X = (torch.randn(4, 32, generator=torch.Generator().manual_seed(1)),)


@pytest.fixture(autouse=True)
def fake_timer(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path))
    timer = WidthTimer()
    monkeypatch.setattr(ltm, "interleaved_median", timer)

    def no_timing(*a, **k):
        raise AssertionError("a probe was timed; its latency must come from the table")

    monkeypatch.setattr(timing, "interleaved_median", no_timing)
    return timer


def three_groups() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                         nn.Linear(64, 10)).eval()


def hand_ms(m) -> float:
    """The fake timer's table by hand: fc0 out/64, fc2 and fc4 in/64 x out/64, the head in/64 (dense 4 ms)."""
    return (m[0].out_features / 64 + m[2].in_features * m[2].out_features / 64 ** 2
            + m[4].in_features * m[4].out_features / 64 ** 2 + m[6].in_features / 64)


def table_lookup_ms(table, m) -> float:
    """The dense table read at ``m``'s widths, calibrated as the allocation is (dense prediction = measured)."""
    def widths(u):
        mod = m.get_submodule(u.module)
        return [mod.in_features if a.kind == "in" else mod.out_features for a in u.axes]

    dense = sum(u.dense_ms for u in table.units)
    return sum(u.time(widths(u)) for u in table.units) * table.model_ms / dense


def recovery(evaluate, seen=None) -> Recovery:
    def sizes(m):
        return {"params": sum(p.numel() for p in m.parameters())}

    def ev(m):
        if seen is not None:
            seen.append(m)
        return evaluate(m)

    return Recovery(prune=lambda m, **kw: m, finetune=lambda m: None, evaluate=ev, measure=sizes,
                    granularity="channel")


def linear_loss(dense_ms: float, per_cut: float):
    """Accuracy 0.9 at the dense model, losing ``per_cut`` for each unit of latency cut (hand formula's latency)."""
    return lambda m: {"accuracy": 0.9 - per_cut * (1.0 - hand_ms(m) / dense_ms)}


def test_each_probe_latency_is_the_dense_tables_prediction_of_its_widths(fake_timer):
    model = three_groups()
    seen = []
    res = budget_search(model, recovery(linear_loss(4.0, 0.2), seen), max_accuracy_drop=8.0, objective="latency",
                        example_inputs=X, tol=0.05, max_probes=6)
    search_calls = fake_timer.calls
    graph = build_graph(model, X, module_rule=handler_for)
    groups = [g for g in graph.groups if g.reason is None and len(g.prunable)]
    fresh = WidthTimer()
    table = ltm.build_table(model, graph, X, groups, timer=fresh, use_cache=False)
    assert search_calls == fresh.calls  # the dense table was timed once; no probe was
    assert res.baseline["latency_ms"] == pytest.approx(4.0) == pytest.approx(hand_ms(model))
    probed = seen[1:]  # seen[0] is the baseline
    assert len(probed) == len(res.probes) >= 3
    for p, m in zip(res.probes, probed):
        assert p["latency_ms"] == pytest.approx(hand_ms(m), rel=1e-9)
        assert p["latency_ms"] == pytest.approx(table_lookup_ms(table, m), rel=1e-9)
        assert p["latency_cut"] == pytest.approx(1 - hand_ms(m) / 4.0, rel=1e-9)
        assert p["latency_cut"] >= p["ratio"] - 1e-9  # each probe meets its target: ratio = latency removed
        assert p["params"] == sum(t.numel() for t in m.parameters())
    feasible = [p for p in res.probes if p["ok"]]
    assert res.best["latency_ms"] == min(p["latency_ms"] for p in feasible)
    assert hand_ms(res.model) == pytest.approx(res.best["latency_ms"])


def one_group() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 10)).eval()


def test_the_search_returns_the_largest_latency_cut_within_the_budget():
    # by hand: one group of 64 channels on a grid of multiples of 8 (floor 8); latency 2 w / 64 of 2 ms, so a cut of
    # 1 - w / 64. Accuracy falls 0.2 per unit cut: an 11-point budget allows cuts up to 0.55, the grid's largest such
    # cut is 0.5 (w = 32), and the target cuts that give it are (0.375, 0.5]: the search ends within tol below 0.5.
    tol = 0.01
    res = budget_search(one_group(), recovery(lambda m: {"accuracy": 0.9 - 0.2 * (1 - m[0].out_features / 64)}),
                        max_accuracy_drop=11.0, objective="latency", example_inputs=X, tol=tol, max_probes=12)
    assert res.model[0].out_features == 32 and res.best["latency_cut"] == pytest.approx(0.5)
    assert 0.5 - tol <= max(p["ratio"] for p in res.probes if p["ok"]) <= 0.5  # the bisection got within tol
    assert res.ratio <= 0.5 and res.best["drop_points"] <= 11.0  # the first probe at that cut (later ones tie)
    # the default hi (0.99) is lowered to the deepest cut the layer floor allows: every group at 8 of 64 channels
    assert res.extra["max_latency_cut"] == pytest.approx(1 - 8 / 64, abs=2e-6) and res.extra["max_latency_cut"] < 0.875
    assert res.probes[0]["ratio"] == res.extra["max_latency_cut"] and res.probes[0]["latency_cut"] == pytest.approx(0.875)
    assert "latency cut 50.00%" in res.message
    # a recovery wired by hand with the same helpers searches the same probes
    model = one_group()
    base = recovery(lambda m: {"accuracy": 0.9 - 0.2 * (1 - m[0].out_features / 64)})
    wired = base.with_(measure=latency_measure_fn(model, X, base.measure), prune=latency_prune_fn(X))
    again = budget_search(model, wired, max_accuracy_drop=11.0, objective="latency", tol=tol, max_probes=12)
    assert again.probes == res.probes


def test_latency_objective_errors():
    ok = lambda m: {"accuracy": 0.9}  # noqa: E731
    weight = recovery(ok).with_(granularity="weight")
    with pytest.raises(ConfigError, match="granularity 'channel'.*no latency model"):
        budget_search(one_group(), weight, objective="latency", example_inputs=X)
    with pytest.raises(ConfigError, match="pass example_inputs="):
        budget_search(one_group(), recovery(ok), objective="latency")
    with pytest.raises(ConfigError, match="prune_kwargs may not set latency_target"):
        budget_search(one_group(), recovery(ok), objective="latency", example_inputs=X,
                      prune_kwargs={"latency_target": 0.5})
    with pytest.raises(ConfigError, match="objective 'ratio' prunes with recovery.prune"):
        budget_search(one_group(), recovery(ok), objective="ratio", example_inputs=X)
