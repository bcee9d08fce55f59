"""First-order Taylor saliency |w * dL/dw| (Molchanov et al.), averaged over calibration batches."""
from __future__ import annotations

from typing import Dict

import torch

from ..errors import PruningError
from .base import GRADIENTS, WEIGHTS, Criterion, register_criterion


@register_criterion("taylor")
class Taylor(Criterion):
    """Per weight: mean over calibration batches b of |w * g_b| where g_b = dL_b/dw.

    The loss change from zeroing w is approximated to first order by w * dL/dw; the
    absolute value is taken per batch before averaging so that opposite-signed
    gradients of different batches do not cancel. Under torchrun the per-weight sums and batch counts are
    summed over the processes before scoring (the mean over every process's batches).
    """

    needs = frozenset({WEIGHTS, GRADIENTS})

    def __init__(self):
        self._sums: Dict[str, torch.Tensor] = {}
        self._counts: Dict[str, int] = {}

    def reset(self):
        self._sums.clear()
        self._counts.clear()

    def observe(self, params):
        for name, p in params:
            if p.grad is None:
                continue
            sal = (p.detach() * p.grad.detach()).abs()
            if name in self._sums:
                self._sums[name] += sal
            else:
                self._sums[name] = sal.clone()
            self._counts[name] = self._counts.get(name, 0) + 1

    def all_reduce(self, sums):
        total = sums({**{("sum", n): s for n, s in self._sums.items()},
                      **{("count", n): torch.tensor(c, dtype=torch.int64) for n, c in self._counts.items()}})
        self._sums = {n: v for (kind, n), v in total.items() if kind == "sum"}
        self._counts = {n: int(v) for (kind, n), v in total.items() if kind == "count"}

    def weight_scores(self, name, weight):
        if name not in self._sums:
            raise PruningError(
                f"taylor criterion has no gradient statistics for {name!r}: pass calibration batches "
                "(calibration=DataLoader, loss_fn=...) so gradients can be accumulated"
            )
        return self._sums[name] / self._counts[name]

    def group_scores(self, group, **ctx):
        """Per channel: summed |w * dL/dw| over its slices in every coupled layer (mean over calibration batches)."""
        from .aggregate import aggregate

        if not self._sums:
            raise PruningError(
                "taylor criterion has no gradient statistics: pass calibration=[(inputs, targets), ...] "
                "(and loss_fn if the model does not output class logits)"
            )

        def fn(name, weight, dim):
            if name not in self._sums:
                return None
            sal = self._sums[name] / self._counts[name]
            return sal.movedim(dim, 0).reshape(sal.shape[dim], -1).double().sum(1)

        return aggregate(group, ctx["model"], fn, reduction=ctx.get("reduction", "mean"), normalize=ctx.get("normalize", "mean"))

