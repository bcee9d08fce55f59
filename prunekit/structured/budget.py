"""MACs budget: estimate a selection's MACs from per-layer counts, and search the ratio that meets a MACs target."""
from __future__ import annotations

from typing import Callable, Dict, Tuple

import numpy as np
from torch import nn

from ..errors import PruningError
from ..measure.macs import count_macs


def layer_macs(model: nn.Module, example_inputs) -> Tuple[int, Dict[str, int]]:
    was = model.training
    model.eval()
    try:
        counted = count_macs(model, example_inputs)
    finally:
        model.train(was)
    return int(counted["macs"]), dict(counted["layers"])


def kept_fractions(graph, removed: set) -> Dict[Tuple[str, str], float]:
    """(module, member kind) -> fraction of its positions kept under ``removed`` atoms."""
    cache = graph.__dict__.setdefault("_member_roots", {})
    mask = np.zeros(len(graph.ids), dtype=bool)
    if removed:
        mask[np.fromiter(removed, dtype=np.int64, count=len(removed))] = True
    out = {}
    for key, member in graph.prop.members.items():
        if key not in cache:
            cache[key] = graph.ids.roots(member.ids)
        roots = cache[key]
        out[key] = 1.0 - np.count_nonzero(mask[roots]) / max(1, len(roots))
    return out


def estimate_macs(model: nn.Module, graph, removed: set, total: int, layers: Dict[str, int]) -> float:
    """MACs after removing ``removed``: each counted layer scales with its kept output x input fractions."""
    frac = kept_fractions(graph, removed)
    est = float(total)
    for name, macs in layers.items():
        module = model.get_submodule(name)
        f_out = min(frac.get((name, "out"), 1.0), frac.get((name, "embed"), 1.0))
        f_in = frac.get((name, "in"), 1.0)
        if getattr(module, "groups", 1) > 1:
            f_in = 1.0  # grouped / depthwise: the input fraction is already the output fraction
        if (name, "embed") in frac:
            f_in = frac[(name, "embed")]
        est -= macs * (1.0 - f_out * f_in)
    return est


def search_ratio(removed_for: Callable[[float], set], estimate: Callable[[set], float], target: float,
                 total: int, hi: float = 0.999, steps: int = 24) -> float:
    """Smallest ratio (bisection) whose selection's estimated MACs are <= ``target``."""
    if estimate(removed_for(hi)) > target:
        best = estimate(removed_for(hi))
        raise PruningError(
            f"macs_target {target:.4g} MACs ({target / total:.1%} of {total}) cannot be reached: removing every "
            f"removable channel leaves {best:.4g} ({best / total:.1%}); lower the per-layer floor, un-ignore layers, "
            "or ask for a larger target"
        )
    lo = 0.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        if estimate(removed_for(mid)) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def resolve_target(macs_target: float, total: int) -> float:
    if macs_target is None or macs_target <= 0:
        raise PruningError(f"macs_target must be a positive fraction (<= 1) or an absolute MAC count, got {macs_target!r}")
    return float(macs_target) * total if macs_target <= 1 else float(macs_target)
