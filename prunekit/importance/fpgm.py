"""Filter pruning via geometric median (FPGM, He et al. 2019): filters near the median of their layer are redundant."""
from __future__ import annotations

import torch

from .base import WEIGHTS, Criterion, register_criterion


def distance_sums(weight: torch.Tensor, dim: int) -> torch.Tensor:
    """For every filter (slice along ``dim``): sum of Euclidean distances to all other filters of the layer."""
    flat = weight.detach().movedim(dim, 0).reshape(weight.shape[dim], -1).double()
    return torch.cdist(flat, flat).sum(1)


@register_criterion("fpgm")
class FPGM(Criterion):
    """Score = distance of a filter to the others (approximates distance to the geometric median); low = replaceable.

    Only the filters a layer produces (output rows) are used; a group with none falls back to L2 magnitude.
    """

    needs = frozenset({WEIGHTS})

    def group_scores(self, group, **ctx):
        from .aggregate import aggregate, norm_along

        kw = dict(reduction=ctx.get("reduction", "mean"), normalize=ctx.get("normalize", "mean"))
        weights_only = lambda n, w, d: distance_sums(w, d) if n.endswith("weight") and w.dim() > 1 else None  # noqa: E731
        scores = aggregate(group, ctx["model"], weights_only, kinds=("out", "embed"), **kw)
        if not scores.any():
            scores = aggregate(group, ctx["model"], lambda n, w, d: norm_along(w, d, 2), **kw)
        return scores
