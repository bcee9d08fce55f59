"""Per-layer allocation equals brute-force enumeration; ranking and Pareto front on hand examples."""
import itertools
import random

import pytest

from prunekit.search.allocate import allocate_ratios, importance_ranking, max_safe_ratios, pareto_front


def brute_force(curves, sizes, budget):
    layers = list(curves)
    options = [[(0.0, 0.0)] + sorted(curves[layer].items()) for layer in layers]
    best = (-1.0, None)
    for combo in itertools.product(*options):
        if sum(max(d, 0.0) for _, d in combo) <= budget + 1e-9:
            gain = sum(r * sizes[layer] for layer, (r, _) in zip(layers, combo))
            if gain > best[0] + 1e-12:
                best = (gain, combo)
    return best[0]


def test_dp_matches_brute_force_on_random_problems():
    rng = random.Random(0)
    for _ in range(20):
        layers = [f"l{i}" for i in range(4)]
        ratios = [0.25, 0.5, 0.75]
        curves = {}
        for layer in layers:
            d = sorted(round(rng.uniform(-0.1, 1.5), 2) for _ in ratios)  # monotone-ish drops on a 0.01 grid
            curves[layer] = dict(zip(ratios, d))
        sizes = {layer: rng.randint(10, 1000) for layer in layers}
        budget = round(rng.uniform(0.1, 2.0), 2)
        alloc = allocate_ratios(curves, sizes, budget)
        used = sum(max(curves[layer].get(r, 0.0), 0.0) for layer, r in alloc.items() if r > 0)
        assert used <= budget + 1e-9
        assert sum(r * sizes[layer] for layer, r in alloc.items()) == pytest.approx(brute_force(curves, sizes, budget))


def test_insensitive_big_layer_gets_the_budget():
    curves = {"big": {0.5: 0.1, 0.9: 0.3}, "small": {0.5: 0.6, 0.9: 2.0}}
    alloc = allocate_ratios(curves, {"big": 1000, "small": 10}, 0.5)
    assert alloc == {"big": 0.9, "small": 0.0}


def test_max_safe_and_ranking_and_pareto():
    curves = {"a": {0.2: 0.1, 0.5: 0.4, 0.8: 3.0}, "b": {0.2: 0.0, 0.5: 0.1, 0.8: 0.2}}
    assert max_safe_ratios(curves, 0.5) == {"a": 0.5, "b": 0.8}
    ranking = importance_ranking(curves)
    assert [r["layer"] for r in ranking] == ["a", "b"] and ranking[0]["rank"] == 1
    pts = [{"nonzero_params": 10, "accuracy": 0.8}, {"nonzero_params": 20, "accuracy": 0.7},
           {"nonzero_params": 30, "accuracy": 0.9}, {"nonzero_params": 5, "accuracy": 0.5}]
    front = pareto_front(pts)
    assert [p["nonzero_params"] for p in front] == [5, 10, 30]
