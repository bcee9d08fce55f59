"""Choosing channels: how many per group (local ratio, overrides, global ranking with a floor), then which ones."""
from __future__ import annotations

import math
from typing import Dict, List, Optional

import numpy as np

DEFAULT_FLOOR = 0.1
"""``layer_floor=None`` in global channel pruning: every group keeps at least this fraction."""
LATENCY_FLOORS = (0.5, 0.4, 0.25, 0.1)
"""``layer_floor=None`` with ``latency_target``: the highest of these at which the target is reachable. Measured on
Fashion-MNIST at half the dense latency, floor 0.1 cut single layers to a quarter and lost 1.55 / 1.17 points after
the fine-tune (ResNet-20 / VGG-6); floor 0.4 kept every group at half width or more and lost 0.84 / 0.75."""


def max_removable(group, floor: float = 0.0) -> int:
    """Most atoms a group can lose: never empty, keep ``floor`` of it, only unfrozen atoms."""
    n = len(group.atoms)
    keep = max(1, math.ceil(floor * n))
    return max(0, min(len(group.prunable), n - keep))


def local_count(group, ratio: float) -> int:
    return min(int(math.floor(len(group.atoms) * ratio + 1e-9)), max_removable(group))


def global_counts(groups: List, scores: Dict[int, np.ndarray], ratio: float, floor: float) -> Dict[int, int]:
    """Rank all prunable atoms of ``groups`` together; remove the lowest ``ratio`` of their channels, each group
    keeping at least ``floor`` of its own (and one)."""
    counts = {g.index: 0 for g in groups}
    total = sum(len(g.atoms) for g in groups)
    budget = int(math.floor(total * ratio + 1e-9))
    parts = [(g.index, prunable_scores(g, scores[g.index])) for g in groups]
    parts = [(gi, s) for gi, s in parts if len(s)]
    if budget <= 0 or not parts:
        return counts
    s = np.concatenate([sc for _, sc in parts])
    gidx = np.concatenate([np.full(len(sc), gi) for gi, sc in parts])
    order = np.lexsort((gidx, s))  # ascending score, ties by group
    gs = gidx[order]
    by_group = np.argsort(gs, kind="stable")
    firsts = np.searchsorted(gs[by_group], gs[by_group], side="left")
    rank = np.empty(len(gs), dtype=np.int64)
    rank[by_group] = np.arange(len(gs)) - firsts  # position of each atom within its own group's ranking
    limits = {g.index: max_removable(g, floor) for g in groups}
    eligible = rank < np.array([limits[int(g)] for g in gs])
    chosen = gs[np.nonzero(eligible)[0][:budget]]
    for gi, n in zip(*np.unique(chosen, return_counts=True)):
        counts[int(gi)] = int(n)
    return counts


def prunable_scores(group, scores: np.ndarray) -> np.ndarray:
    return scores[np.searchsorted(group.atoms, group.prunable)]


def round_count(group, count: int, round_to: Optional[int]) -> int:
    """Adjust a removal count so the kept atoms are a multiple of ``round_to`` (rounding the kept number up)."""
    if not round_to or round_to <= 1 or count <= 0:
        return count
    n = len(group.atoms)
    keep = min(n, int(math.ceil((n - count) / round_to)) * round_to)
    return min(n - keep, max_removable(group))


def choose(group, scores: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` lowest-scoring unfrozen atoms; grouped-conv divisions each lose the same number."""
    if count <= 0:
        return np.zeros(0, dtype=np.int64)
    if group.divisions:
        score_of = dict(zip(group.atoms.tolist(), scores.tolist()))
        prunable = set(group.prunable.tolist())
        removed: set = set()
        for div in group.divisions:
            per = count // div.shape[0]
            for row in div:
                cand = sorted((score_of[a], a) for a in row.tolist() if a in prunable)
                per_row = min(per, len(row) - 1, len(cand))
                removed.update(a for _, a in cand[:per_row])
        return np.array(sorted(removed), dtype=np.int64)
    prunable_atoms = group.prunable
    order = np.lexsort((prunable_atoms, prunable_scores(group, scores)))
    return np.sort(prunable_atoms[order[:count]])


def division_consistent(group, removed: np.ndarray) -> bool:
    """Every division of a grouped conv lost the same number of atoms (else the groups would be unequal)."""
    rem = set(removed.tolist())
    for div in group.divisions:
        lost = {sum(a in rem for a in row.tolist()) for row in div}
        if len(lost) > 1:
            return False
    return True
