"""Magnitude and random criteria: L1 |w|, L2 w^2 (same ranking per element, different group aggregation), random."""
from __future__ import annotations

import torch

from .base import WEIGHTS, Criterion, optional_seed, register_criterion


@register_criterion("l1")
class L1(Criterion):
    """Keep the weights of largest absolute value."""

    needs = frozenset({WEIGHTS})

    def weight_scores(self, name, weight):
        return weight.detach().abs()

    def group_scores(self, group, **ctx):
        """Per channel: L1 norm of its slice in every coupled layer, normalised per layer, then combined."""
        return _aggregate(group, lambda name, w, dim: _norm_along(w, dim, 1), ctx)


@register_criterion("l2")
class L2(Criterion):
    """Squared magnitude; per element it ranks like L1, over a channel it is the L2 norm."""

    needs = frozenset({WEIGHTS})

    def weight_scores(self, name, weight):
        return weight.detach().pow(2)

    def group_scores(self, group, **ctx):
        """Per channel: L2 norm of its slice in every coupled layer, normalised per layer, then combined."""
        return _aggregate(group, lambda name, w, dim: _norm_along(w, dim, 2), ctx)


@register_criterion("random")
class Random(Criterion):
    """Uniform random scores (a baseline); seeded for reproducibility. Reads nothing but the shapes."""

    needs = frozenset()

    def __init__(self, seed: int | None = 0):
        self.seed = seed
        self._gen = optional_seed(seed)

    def weight_scores(self, name, weight):
        return torch.rand(weight.shape, generator=self._gen).to(weight.device)

    def group_scores(self, group, **ctx):
        """Uniform random score per channel of the group (seeded)."""
        return torch.rand(len(group.atoms), generator=self._gen, dtype=torch.float64).numpy()


def _aggregate(group, fn, ctx):
    from .aggregate import aggregate

    return aggregate(group, ctx["model"], fn, reduction=ctx.get("reduction", "mean"), normalize=ctx.get("normalize", "mean"))


def _norm_along(w, dim, p):
    from .aggregate import norm_along

    return norm_along(w, dim, p)
