"""Per-layer ratio allocation from sensitivity curves: the most reduction whose summed per-layer accuracy drops fit a budget."""
from __future__ import annotations

import math
from typing import Dict, Mapping

from ..errors import BudgetError, ConfigError


def allocate_ratios(curves: Mapping[str, Mapping[float, float]], sizes: Mapping[str, float], max_drop_points: float,
                    *, resolution: float = 0.01) -> Dict[str, float]:
    """Choose one ratio per layer maximising removed size, subject to sum of per-layer drops <= ``max_drop_points``.

    ``curves[layer][ratio]`` is the accuracy drop in points measured when that layer alone is
    pruned at ``ratio`` (ratio 0 with drop 0 is always allowed); ``sizes[layer]`` is what a
    unit ratio removes (parameters or MACs). Drops are assumed additive (the usual first-order
    approximation; verify the combined model afterwards). Solved exactly as a multiple-choice
    knapsack by dynamic programming over drops discretised to ``resolution`` points;
    improvements (negative drops) count as zero.
    """
    if max_drop_points < 0:
        raise ConfigError(f"the accuracy budget must be >= 0 points, got {max_drop_points}")
    missing = [name for name in curves if name not in sizes]
    if missing:
        raise ConfigError(f"allocate_ratios: no size given for layers {missing}")
    cap = int(math.floor(max_drop_points / resolution + 1e-9))
    layers = list(curves)
    # best[c] = (removed size, choices) using drop budget c (in resolution units)
    best = [(0.0, {})] * (cap + 1)
    for layer in layers:
        options = {0.0: 0.0, **{float(r): float(d) for r, d in curves[layer].items()}}
        new = []
        for c in range(cap + 1):
            cand = (-1.0, {})
            for r, d in options.items():
                cost = int(math.ceil(max(d, 0.0) / resolution - 1e-9))
                if cost > c:
                    continue
                gain = best[c - cost][0] + r * float(sizes[layer])
                if gain > cand[0] + 1e-12 or (abs(gain - cand[0]) <= 1e-12 and r < cand[1].get(layer, math.inf)):
                    cand = (gain, {**best[c - cost][1], layer: r})
            new.append(cand)
        best = new
    return {layer: best[cap][1].get(layer, 0.0) for layer in layers}


def max_safe_ratios(curves: Mapping[str, Mapping[float, float]], max_drop_points: float) -> Dict[str, float]:
    """Per layer, the largest tried ratio whose drop (that layer alone) stays within ``max_drop_points``."""
    out = {}
    for layer, curve in curves.items():
        ok = [r for r, d in curve.items() if d <= max_drop_points + 1e-9]
        out[layer] = max(ok) if ok else 0.0
    return out


def importance_ranking(curves: Mapping[str, Mapping[float, float]]) -> list:
    """Layers ordered from most to least sensitive: mean accuracy drop over the tried ratios (area under the curve)."""
    if not curves:
        raise BudgetError("no sensitivity curves to rank; run the sensitivity analysis on at least one layer")
    score = {layer: (sum(c.values()) / len(c) if c else 0.0) for layer, c in curves.items()}
    return [{"layer": layer, "mean_drop_points": s, "rank": i + 1}
            for i, (layer, s) in enumerate(sorted(score.items(), key=lambda kv: -kv[1]))]


def pareto_front(points: list, *, size_key: str = "nonzero_params", metric_key: str = "accuracy") -> list:
    """Points not dominated by another (smaller or equal size and higher or equal metric, one strictly), sorted by size."""
    front = []
    for p in points:
        dominated = any(q[size_key] <= p[size_key] and q[metric_key] >= p[metric_key]
                        and (q[size_key] < p[size_key] or q[metric_key] > p[metric_key]) for q in points)
        if not dominated:
            front.append(p)
    return sorted(front, key=lambda p: p[size_key])
