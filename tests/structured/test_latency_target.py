"""latency_target: the measured lookup table (monotone fit, cache, key) and the allocation by importance per ms saved.

References: sklearn's IsotonicRegression for the monotone fit; a layer that sleeps in proportion to its width (so its
cost is known by construction, whatever the machine's load) for the allocation; the MACs-targeted allocation of the
same model as the contrast; the BudgetError's closest reachable latency is checked by asking for it.
"""
from __future__ import annotations

import re
import time

import numpy as np
import pytest
import torch
from torch import nn
import torch.nn.functional as F

import prunekit
from prunekit.errors import BudgetError, ConfigError
from prunekit.graph.groups import build_graph
from prunekit.structured import latency_cache as lc, latency_table as lt, latency_timing as ltm
from prunekit.structured.handlers import handler_for
from prunekit.structured.latency import latency_report, parse_target
from structured.latency_helpers import WidthTimer

SLEEP_PER_CHANNEL_S = 4e-5  # the slow layer sleeps this long per output channel: 64 channels = 2.6 ms


class SlowLinear(nn.Linear):
    """A Linear whose call also sleeps in proportion to its output width (a kernel that is slow for its MACs)."""

    prunekit_leaf = True  # traced whole, sliced by the Linear handler

    def forward(self, x):
        time.sleep(SLEEP_PER_CHANNEL_S * self.weight.shape[0])
        return F.linear(x, self.weight, self.bias)


def slow_model() -> nn.Module:
    torch.manual_seed(0)
    model = nn.Sequential()
    model.add_module("fc1", nn.Linear(32, 64))
    model.add_module("act1", nn.ReLU())
    model.add_module("slow", SlowLinear(64, 64))
    model.add_module("act2", nn.ReLU())
    model.add_module("fc3", nn.Linear(64, 64))
    model.add_module("act3", nn.ReLU())
    model.add_module("head", nn.Linear(64, 10))
    with torch.no_grad():  # the slow layer's channels score highest: a score-driven (MACs) cut keeps them
        model.slow.weight.mul_(10.0)
    return model.eval()


X = (torch.randn(4, 32, generator=torch.Generator().manual_seed(1)),)


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path))
    return tmp_path / "latency"


def graph_of(model, x=X):
    return build_graph(model, x, module_rule=handler_for)


def prunable(graph):
    return [g for g in graph.groups if g.reason is None and len(g.prunable)]


# --- the table ------------------------------------------------------------------------------------------------


def test_the_monotone_fit_is_sklearns_isotonic_regression():
    from sklearn.isotonic import IsotonicRegression

    rng = np.random.default_rng(0)
    for _ in range(20):
        y = np.cumsum(rng.normal(0.2, 1.0, size=12))
        ref = IsotonicRegression(increasing=True).fit_transform(np.arange(len(y)), y)
        np.testing.assert_allclose(lt.isotonic(y.tolist()), ref, rtol=1e-9, atol=1e-12)


def test_grid_holds_the_dense_width_and_multiples():
    for n, step in ((16, 4), (64, 8), (100, 8), (512, 16)):
        widths = lt.candidate_widths(n)
        assert widths[-1] == n and len(widths) <= lt.MAX_POINTS
        assert all(w % step == 0 for w in widths[:-1])
    assert lt.candidate_widths(2048)[:2] == [144, 288]  # coarsened to at most MAX_POINTS, still multiples of 16


def test_a_large_linear_times_monotone_in_width():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(512, 1024), nn.ReLU(), nn.Linear(1024, 256)).eval()
    x = (torch.randn(64, 512),)
    graph = graph_of(model, x)
    table = ltm.build_table(model, graph, x, prunable(graph), use_cache=False)
    axis = next(a for u in table.units if u.module == "0" for a in u.axes if a.kind == "out")
    fit = axis.fitted
    assert all(b >= a for a, b in zip(fit, fit[1:]))  # the fit never predicts faster for more channels
    # the raw measurement agrees where the backend is monotone: 1024 output channels cost clearly more than 64
    assert axis.ms[-1] > 2.0 * axis.ms[0], axis.ms
    assert axis.at(1024) == pytest.approx(fit[-1]) and fit[0] <= axis.at(100) <= fit[-1]


def test_the_table_is_reused_from_the_cache(monkeypatch, cache_dir):
    timer = WidthTimer()
    monkeypatch.setattr(ltm, "interleaved_median", timer)
    model = slow_model()
    graph = graph_of(model)
    first = ltm.build_table(model, graph, X, prunable(graph))
    assert timer.calls > 0 and first.timed_calls == timer.calls
    assert len(list(cache_dir.glob("*.json"))) == 1
    timer.calls = 0
    second = ltm.build_table(slow_model(), graph_of(slow_model()), X, prunable(graph_of(slow_model())))
    assert timer.calls == 0 and second.timed_calls == 0  # a second run times nothing
    assert second.path == first.path and second.model_ms == first.model_ms
    assert [a.ms for u in second.units for a in u.axes] == [a.ms for u in first.units for a in u.axes]


def test_held_chunks_cover_every_call_in_order_within_the_budget():
    sizes = {"a": 40, "b": 30, "c": 50, "d": 200, "e": 10, "f": 10}
    chunks = ltm.held_chunks(list(sizes), sizes, budget=100)
    assert [n for c in chunks for n in c] == list(sizes)
    assert chunks == [["a", "b"], ["c"], ["d"], ["e", "f"]]  # "d" alone exceeds the budget: a chunk of its own
    assert all(sum(sizes[n] for n in c) <= 100 for c in chunks if len(c) > 1)


class HeldTimer:
    """Fixed times (grid widths by their label, every dense layer 1 ms, the model 100 ms) and, at most, the bytes of
    the recorded layer inputs a calibration round (the model and the dense layers) holds in its calls."""

    def __init__(self):
        self.most_held = 0

    def __call__(self, label, candidates, **kw):
        held = {id(c): c.numel() * c.element_size() for fn in candidates.values()
                for c in [getattr(cell, "cell_contents", None) for cell in (fn.__closure__ or ())]
                + list(fn.__defaults__ or ()) if isinstance(c, torch.Tensor)}
        if "model" in candidates:
            self.most_held = max(self.most_held, sum(held.values()))
        for fn in candidates.values():
            fn()
        out = {k: int(k) / 64 if k.isdigit() else 0.0 for k in candidates}
        if "model" in candidates:
            out = {k: 1.0 for k in candidates}
            out["model"] = 100.0
        return out


def test_the_table_holds_layer_inputs_chunk_by_chunk_and_comes_out_the_same(monkeypatch):
    model = slow_model()
    graph = graph_of(model)
    whole, chunked = HeldTimer(), HeldTimer()
    one = ltm.build_table(model, graph, X, prunable(graph), timer=whole, use_cache=False)
    monkeypatch.setattr(ltm, "HELD_BYTES", 1)  # every layer call a chunk of its own
    many = ltm.build_table(model, graph, X, prunable(graph), timer=chunked, use_cache=False)
    assert many.model_ms == one.model_ms == 100.0
    assert [(u.node, u.dense_ms, [a.ms for a in u.axes]) for u in many.units] == \
        [(u.node, u.dense_ms, [a.ms for a in u.axes]) for u in one.units]
    inputs = {u.node: int(np.prod(graph.captured.shape(next(n for n in graph.captured.gm.graph.nodes
                                                                 if n.name == u.node).args[0]))) * 4
              for u in one.units}
    assert whole.most_held == sum(inputs.values())  # one chunk: every recorded input at once
    assert chunked.most_held == max(inputs.values())  # one at a time


def test_the_cache_key_changes_with_batch_threads_and_backend(monkeypatch):
    monkeypatch.setattr(ltm, "interleaved_median", WidthTimer())
    base = lt.Conditions("torch", 4, ((4, 32),), 1)
    keys = {lc.cache_key("s", base), lc.cache_key("s", lt.Conditions("torch", 8, ((8, 32),), 1)),
            lc.cache_key("s", lt.Conditions("torch", 4, ((4, 32),), 2)),
            lc.cache_key("s", lt.Conditions("onnxruntime", 4, ((4, 32),), 1)), lc.cache_key("t", base)}
    assert len(keys) == 5
    assert lc.cache_key("s", base) == lc.cache_key("s", lt.Conditions("torch", 4, ((4, 32),), 1))
    model = slow_model()
    graph = graph_of(model)
    paths = {ltm.build_table(model, graph, X, prunable(graph), batch=b, threads=t).path for b, t in
             ((None, 1), (8, 1), (None, 2))}
    assert len(paths) == 3  # batch (from the inputs or latency_batch) and threads name different files


def test_conditions_default_to_the_example_inputs_and_current_threads():
    c = lc.conditions((torch.randn(16, 3, 20, 20),))
    assert (c.batch, c.input_shapes, c.threads, c.backend) == (16, ((16, 3, 20, 20),), torch.get_num_threads(), "torch")
    assert lc.conditions((torch.randn(16, 3, 20, 20),), batch=2).input_shapes == ((2, 3, 20, 20),)
    with pytest.raises(ConfigError, match="onnxruntime"):
        lc.conditions(X, backend="onnxruntime")


# --- the target -----------------------------------------------------------------------------------------------


def test_target_forms():
    assert parse_target(0.5) == ("fraction", 0.5)
    assert parse_target("12ms") == ("ms", 12.0) and parse_target(" 2.5 ms") == ("ms", 2.5)
    with pytest.raises(ConfigError, match="'12ms'"):
        parse_target(12)  # a number above 1 is ambiguous: the message says how to write milliseconds
    for bad in (0, -0.5, "12", "fast", "0ms", True):
        with pytest.raises(ConfigError):
            parse_target(bad)


@pytest.mark.parametrize("other", [{"macs_target": 0.5}, {"round_to": 8}, {"scope": "local"}, {"uniform": True}])
def test_options_that_contradict_a_latency_target_are_refused(other):
    with pytest.raises(ConfigError, match=next(iter(other))):
        prunekit.PruneSpec(granularity="channel", latency_target=0.5, **other).validate()


def test_latency_conditions_without_a_target_are_refused():
    with pytest.raises(ConfigError, match="latency_batch"):
        prunekit.PruneSpec(granularity="channel", latency_batch=8).validate()
    with pytest.raises(ConfigError, match="latency_target"):
        prunekit.PruneSpec(granularity="weight", latency_target=0.5).validate()


def test_latency_target_is_a_recipe_key():
    from prunekit.typed import from_dict

    spec = from_dict(prunekit.PruneSpec, {"granularity": "channel", "latency_target": "3ms", "latency_threads": 1},
                     "prune")
    assert spec.latency_target == "3ms" and spec.latency_threads == 1


# --- the allocation -------------------------------------------------------------------------------------------


def kept_widths(pruned) -> dict:
    return {"fc1": pruned.fc1.out_features, "slow": pruned.slow.out_features, "fc3": pruned.fc3.out_features}


def test_latency_targeted_allocation_prunes_the_slow_layer_first_and_macs_targeted_does_not():
    model = slow_model()
    by_latency = prunekit.prune(model, X, granularity="channel", latency_target=0.6, latency_threads=1,
                                normalize="none", ignore=["head"])
    by_macs = prunekit.prune(model, X, granularity="channel", macs_target=0.6, normalize="none", ignore=["head"])
    lat, macs = kept_widths(by_latency), kept_widths(by_macs)
    # the slow layer's sleep is most of the latency: the latency cut takes it and leaves the fast layers alone
    assert lat["slow"] <= 40 and lat["fc1"] == 64 and lat["fc3"] == 64, lat
    # ranked by score, the slow layer's channels are the last to go: the MACs cut takes the others
    assert macs["slow"] == 64 and min(macs["fc1"], macs["fc3"]) < 64, macs
    report = latency_report(by_latency)
    assert report["target_ms"] == pytest.approx(0.6 * report["dense_ms"])
    assert report["predicted_ms"] <= report["aim_ms"]  # the aim: the target, or where a measured check re-aimed it
    assert report["groups"] and report["layers"]["slow"]["widths"]["out"] == [64, lat["slow"]]
    # how close the prediction comes is timing, measured by `make bench-latency`, not asserted here: the pruned
    # model was measured, with the dense one in the same rounds, and the report says by how much the prediction missed
    assert report["measured_ms"] > 0 and report["measured_fraction"] == pytest.approx(
        report["measured_ms"] / report["measured_dense_ms"], rel=1e-6)
    assert report["error"] == pytest.approx(
        (report["predicted_ms"] / report["dense_ms"]) / report["measured_fraction"] - 1, rel=1e-6)
    # the allocation was checked on the real pruned model (1 + latency_checks tries at most). The kept try is the one
    # whose prediction the report holds; when some try measured at or under the target, it is the slowest of those
    checks = report["checks"]
    assert 1 <= len(checks) <= 3
    kept = [c for c in checks if c["predicted"] == pytest.approx(report["predicted_ms"] / report["dense_ms"])]
    assert kept
    under = [c["measured"] for c in checks if c["measured"] <= 0.6]
    if under:
        assert any(c["measured"] == max(under) for c in kept)
    assert by_latency(*X).shape == model(*X).shape


def test_plan_keeps_the_latency_prediction(monkeypatch):
    monkeypatch.setattr(ltm, "interleaved_median", WidthTimer())
    plan = prunekit.plan(slow_model(), X, granularity="channel", latency_target=0.9, ignore=["head"])
    lat = plan.latency
    assert lat["batch"] == 4 and lat["backend"] == "torch" and lat["threads"] == torch.get_num_threads()
    assert lat["predicted_ms"] <= lat["target_ms"]
    kept = {int(gi): row["kept"] for gi, row in lat["groups"].items()}
    assert kept == {g.index: g.size - len(g.remove) for g in plan.groups if g.index in kept}  # the plan's widths
    again = prunekit.structured.Plan.from_json(plan.to_json())
    assert again.latency["groups"] == lat["groups"] and again.latency["predicted_ms"] == lat["predicted_ms"]


def test_an_unreachable_target_names_the_closest_reachable_latency(monkeypatch):
    monkeypatch.setattr(ltm, "interleaved_median", WidthTimer())
    model = slow_model()
    with pytest.raises(BudgetError, match="closest reachable latency") as info:
        prunekit.prune(model, X, granularity="channel", latency_target=0.01, ignore=["head"])
    reachable = float(re.search(r"closest reachable latency is ([0-9.eE+-]+) ms", str(info.value)).group(1))
    # by hand: fc1 (out 8/64), slow and fc3 (8/64 x 8/64 each), head (in 8/64) of a 4 ms dense model
    assert reachable == pytest.approx(2 * 8 / 64 + 2 * (8 / 64) ** 2, rel=1e-3)  # printed to 4 digits
    pruned = prunekit.prune(model, X, granularity="channel", latency_target=f"{reachable * 1.001}ms", ignore=["head"])
    # the closest reachable latency is every group at its floor (layer_floor 0.1: 64 -> 8 channels, a grid width)
    assert kept_widths(pruned) == {"fc1": 8, "slow": 8, "fc3": 8}


def test_a_search_measures_pruned_copies_with_the_same_latency_model(monkeypatch):
    from prunekit.schedule import Recovery
    from prunekit.structured.latency import latency_measure_fn, latency_prune_fn

    monkeypatch.setattr(ltm, "interleaved_median", WidthTimer())
    model = slow_model()

    def sizes(m):
        return {"params": sum(p.numel() for p in m.parameters())}

    measure = latency_measure_fn(model, X, sizes)
    prune_fn = latency_prune_fn(X, ignore=["head"])
    pruned = prune_fn(model, total=0.5, step=0.5)
    report = latency_report(pruned)
    row = measure(pruned)
    # the table lookup of the pruned copy's widths is the allocation's own prediction (no rest here: exact)
    assert row["latency_ms"] == pytest.approx(report["predicted_ms"], rel=1e-9)
    assert row["params"] == sizes(pruned)["params"]
    assert report["target_ms"] == pytest.approx(0.5 * report["dense_ms"])
    recovery = Recovery(prune=prune_fn, finetune=lambda m: None, evaluate=lambda m: {"accuracy": 1.0},
                        measure=measure, granularity="channel")
    assert recovery.measure(model)["latency_ms"] == pytest.approx(report["dense_ms"])


# --- measured checks: the allocation re-aimed where the table is wrong ----------------------------------------


def fake_checks(monkeypatch, true_fraction, noise=0.0):
    """meet_measured driven by a 'real' latency: each allocation is its predicted fraction, and the measurement
    returns ``true_fraction(predicted)`` (the table's error), with a relative standard error ``noise``."""
    from prunekit.structured import latency_check as lat

    measured = []

    def measure(dense, pruned, inputs, batch, threads, rounds=15, seed=0):
        measured.append(pruned)
        return {"dense_ms": 10.0, "pruned_ms": 10.0 * true_fraction(pruned), "fraction": true_fraction(pruned),
                "spread": noise * 1.35 / 1.25 * 15 ** 0.5, "rounds": 15, "stderr": noise}

    monkeypatch.setattr(lat, "measured_fraction", measure)

    def report(aim):  # the table meets any aim exactly (predicted = aim); "removed" is the predicted fraction
        return {"target_ms": 5.0, "dense_ms": 10.0, "aim_ms": aim * 10.0, "predicted_ms": aim * 10.0, "batch": 2,
                "threads": 1}

    def reallocate(aim_ms):
        return aim_ms / 10.0, report(aim_ms / 10.0)

    return lat, report, reallocate, measured


@pytest.mark.parametrize("true_fraction", [lambda p: 1.2 * p, lambda p: 0.8 * p, lambda p: p ** 1.5 * 1.4,
                                           lambda p: 0.1 + 0.9 * p * p])
def test_measured_checks_re_aim_until_the_real_latency_meets_the_target(monkeypatch, true_fraction):
    lat, report, reallocate, measured = fake_checks(monkeypatch, true_fraction)
    removed, out = lat.meet_measured(None, None, 0.5, report(0.5), reallocate, build=lambda rem: rem, checks=3)
    # the allocation kept measures at most the target and within the tolerance under it, on the real (fake) latency
    assert 0.5 * (1 - lat.TOLERANCE) <= true_fraction(removed) <= 0.5, out["checks"]
    assert out["measured_fraction"] == pytest.approx(true_fraction(removed))
    assert [c["measured"] for c in out["checks"]] == [pytest.approx(true_fraction(m)) for m in measured]


def test_a_check_that_meets_the_target_keeps_the_table_and_a_noisy_one_changes_nothing(monkeypatch):
    lat, report, reallocate, measured = fake_checks(monkeypatch, lambda p: p * 0.97)
    removed, out = lat.meet_measured(None, None, 0.5, report(0.5), reallocate, build=lambda rem: rem, checks=2)
    assert removed == 0.5 and len(out["checks"]) == 1  # 3% under the target: one measurement, no re-allocation
    lat, report, reallocate, measured = fake_checks(monkeypatch, lambda p: p * 1.02)
    removed, out = lat.meet_measured(None, None, 0.5, report(0.5), reallocate, build=lambda rem: rem, checks=2)
    assert len(out["checks"]) >= 2 and removed < 0.5  # 2% over is a miss: the target is a ceiling
    # a 15% miss measured with a 10% standard error is not told from noise: the table's allocation stands
    lat, report, reallocate, measured = fake_checks(monkeypatch, lambda p: p * 1.15, noise=0.10)
    removed, out = lat.meet_measured(None, None, 0.5, report(0.5), reallocate, build=lambda rem: rem, checks=2)
    assert removed == 0.5 and len(out["checks"]) == 1
    # the band's edge counts, not its middle: 0.501 with a 0.7% standard error (bench-latency's VGG-6) stands,
    # 0.52 does not
    lat, report, reallocate, measured = fake_checks(monkeypatch, lambda p: p * 1.002, noise=0.007)
    removed, out = lat.meet_measured(None, None, 0.5, report(0.5), reallocate, build=lambda rem: rem, checks=2)
    assert removed == 0.5 and len(out["checks"]) == 1
    lat, report, reallocate, measured = fake_checks(monkeypatch, lambda p: p * 1.04, noise=0.007)
    removed, out = lat.meet_measured(None, None, 0.5, report(0.5), reallocate, build=lambda rem: rem, checks=2)
    assert len(out["checks"]) >= 2 and removed * 1.04 <= 0.5


def test_latency_checks_zero_trusts_the_table(monkeypatch):
    from prunekit.structured import latency_check as lat

    def fail(*a, **k):
        raise AssertionError("latency_checks=0 must not time the pruned model against the dense one")

    monkeypatch.setattr(lat, "measured_fraction", fail)
    pruned = prunekit.prune(slow_model(), X, granularity="channel", latency_target=0.6, latency_threads=1,
                            normalize="none", ignore=["head"], latency_checks=0)
    assert "checks" not in latency_report(pruned)
    with pytest.raises(ConfigError, match="latency_checks"):
        prunekit.PruneSpec(granularity="channel", latency_target=0.5, latency_checks=-1).validate()
    with pytest.raises(ConfigError, match="latency_checks"):
        prunekit.PruneSpec(granularity="channel", latency_checks=1).validate()


def test_allocation_weighs_a_channel_by_every_layer_it_runs_through():
    """A residual stream channel crosses every block; its mean score is summed back over the layers with parameters
    that hold it (counted here by hand from the module list), an inner channel over its own two layers."""
    from prunekit.structured.latency import totals

    class Res(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Conv2d(3, 8, 3, padding=1)
            self.a1, self.a2 = nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)
            self.b1, self.b2 = nn.Conv2d(8, 4, 3, padding=1), nn.Conv2d(4, 8, 3, padding=1)
            self.head = nn.Conv2d(8, 2, 1)

        def forward(self, x):
            x = self.stem(x)
            x = x + self.a2(F.relu(self.a1(x)))
            x = x + self.b2(F.relu(self.b1(x)))
            return self.head(x)

    model = Res().eval()
    graph = graph_of(model, (torch.randn(1, 3, 8, 8),))
    by_width = {len(g.atoms): g for g in prunable(graph)}
    stream = by_width[8]  # stem out, a1 in, a2 out, b1 in, b2 out, head in: 6 layers
    inner = next(g for g in prunable(graph) if any(m.axis.module == "a1" for m in g.members) and len(g.atoms) == 4)
    scores = np.linspace(1.0, 2.0, 8)
    np.testing.assert_allclose(totals(model, stream, scores, "mean"), 6 * scores)
    np.testing.assert_allclose(totals(model, inner, scores[:4], "mean"), 2 * scores[:4])  # a1 out, a2 in
    np.testing.assert_allclose(totals(model, stream, scores, "sum"), scores)  # already totals


def test_the_rest_is_shared_by_the_measured_size_curve_not_by_elements():
    # two rest ops of 1000 and 100 elements on root atoms 0-9 / 10-19; the curve makes large tensors dearer per
    # element (as fresh pages above the mmap threshold do): 100 -> 1 ms, 500 -> 2 ms, 1000 -> 10 ms
    rest = [lt.RestNode(1000, [np.arange(10)]), lt.RestNode(100, [np.arange(10, 20)])]
    curve = lt.SizeCurve([100, 500, 1000], [1.0, 2.0, 10.0])
    table = lt.LatencyTable(lt.Conditions("torch", 4, ((4, 32),), 1), 13.0, [], rest, 20, curve=curve)
    removed = np.zeros(20, dtype=bool)
    removed[:5] = True  # the large op keeps half its elements: 500 -> 2 ms of its 10
    by_hand = (2.0 + 1.0) / (10.0 + 1.0)
    assert table.rest_fraction(removed) == pytest.approx(by_hand)
    assert table.predict(removed) == pytest.approx(13.0 * by_hand)
    assert curve(50) == pytest.approx(0.5) and curve(2000) == pytest.approx(20.0)  # proportional outside the grid
    flat = lt.LatencyTable(table.conditions, 13.0, [], rest, 20)  # no curve (an old cache): elements, as before
    assert flat.rest_fraction(removed) == pytest.approx((500 + 100) / 1100)


def test_the_size_curve_is_timed_once_and_cached(monkeypatch, cache_dir):
    seen = []

    def timer(label, candidates, **kw):
        seen.append(label)
        for fn in candidates.values():
            fn()
        return {k: (int(k) / 64 if k.isdigit() else 1.0) for k in candidates}

    monkeypatch.setattr(ltm, "interleaved_median", timer)
    model = slow_model()
    graph = graph_of(model)
    table = ltm.build_table(model, graph, X, prunable(graph))
    assert seen.count("rest size curve") == 1 and table.curve.numel[-1] == max(r.numel for r in table.rest)
    seen.clear()
    again = ltm.build_table(model, graph, X, prunable(graph))
    assert not seen and again.curve.numel == table.curve.numel and again.curve.ms == table.curve.ms


def test_default_floor_is_the_highest_that_reaches_the_target(monkeypatch):
    """layer_floor=None with a latency target: the first of 0.5 / 0.4 / 0.25 / 0.1 whose all-at-floor latency meets
    it, so no layer is cut further than the target needs; the result is that floor given explicitly."""
    monkeypatch.setattr(ltm, "interleaved_median", WidthTimer())
    model = slow_model()

    def run(target, **kw):  # latency_checks=0: the allocation alone, on the table
        return prunekit.prune(model, X, granularity="channel", latency_target=target, ignore=["head"],
                              latency_checks=0, **kw)

    # by hand (WidthTimer, 4 ms dense): every group at half width costs 0.5 + 0.25 + 0.25 + 0.5 = 1.5 ms (0.375)
    loose = run(0.5)
    assert latency_report(loose)["layer_floor"] == 0.5
    assert min(kept_widths(loose).values()) >= 32
    assert kept_widths(loose) == kept_widths(run(0.5, layer_floor=0.5))
    low = run(0.5, layer_floor=0.1)
    assert latency_report(low)["layer_floor"] == 0.1 and min(kept_widths(low).values()) < 32  # the contrast
    # 0.3 of dense is past every group at half width (0.375) and at 0.4 (26 -> 28 or 32 channels); 0.25 reaches it
    with pytest.raises(BudgetError, match=r"layer_floor=0.5\)"):
        run(0.3, layer_floor=0.5)
    tight = run(0.3)
    assert latency_report(tight)["layer_floor"] == 0.25 and min(kept_widths(tight).values()) >= 16
    assert kept_widths(tight) == kept_widths(run(0.3, layer_floor=0.25))
    with pytest.raises(BudgetError, match="tried 0.5, 0.4, 0.25, 0.1"):  # past every floor: names what was tried
        run(0.01)
