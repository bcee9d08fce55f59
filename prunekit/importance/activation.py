"""Activation statistics from calibration batches: mean |activation| and APoZ (average percentage of zeros)."""
from __future__ import annotations

import abc
from typing import Dict

import numpy as np
import torch

from ..errors import PruningError
from .base import ACTIVATIONS, WEIGHTS, Criterion, register_criterion


class _ActivationCriterion(Criterion, abc.ABC):
    """Accumulates per-channel statistics of activation outputs, fed by the calibration loop via ``observe_activation``.

    Per channel atom: the sum of the statistic over every activation position and the number of positions (under
    torchrun both are summed over the processes before scoring, so the mean is over every process's batches).
    """

    # the calibration loop runs the batches through the traced graph; weights: a group no activation reaches
    # falls back to the L2 magnitude of its slices
    needs = frozenset({WEIGHTS, ACTIVATIONS})

    def __init__(self):
        self._sum: Dict[int, float] = {}
        self._count: Dict[int, int] = {}

    def reset(self):
        self._sum.clear()
        self._count.clear()

    @abc.abstractmethod
    def statistic(self, x: torch.Tensor) -> torch.Tensor:
        """Per-position statistic of a (channels, samples) matrix."""

    def observe_activation(self, atoms: np.ndarray, values: torch.Tensor, dim: int) -> None:
        """``values``: an activation tensor; ``atoms[i]`` is the channel atom of index ``i`` along ``dim``."""
        flat = values.detach().movedim(dim, 0).reshape(values.shape[dim], -1).double()
        stat = self.statistic(flat).cpu().numpy()
        n = flat.shape[1]
        for a, s in zip(atoms.tolist(), stat.tolist()):
            self._sum[a] = self._sum.get(a, 0.0) + s * n
            self._count[a] = self._count.get(a, 0) + n

    def all_reduce(self, sums):
        total = sums({**{("sum", a): torch.tensor(v, dtype=torch.float64) for a, v in self._sum.items()},
                      **{("count", a): torch.tensor(c, dtype=torch.int64) for a, c in self._count.items()}})
        self._sum = {a: float(v) for (kind, a), v in total.items() if kind == "sum"}
        self._count = {a: int(v) for (kind, a), v in total.items() if kind == "count"}

    def group_scores(self, group, **ctx):
        if not self._count:
            raise PruningError(f"criterion {self.name!r} has no activation statistics: pass calibration batches")
        vals = np.array([self._sum[a] / self._count[a] if a in self._count else np.nan for a in group.atoms.tolist()])
        if np.isnan(vals).all():
            from .aggregate import aggregate, norm_along

            return aggregate(group, ctx["model"], lambda n, w, d: norm_along(w, d, 2))
        return np.nan_to_num(vals, nan=float(np.nanmean(vals)))


@register_criterion("activation")
class MeanActivation(_ActivationCriterion):
    """Mean absolute activation of the channel over calibration data (low = rarely used)."""

    def statistic(self, x):
        return x.abs().mean(1)


@register_criterion("apoz")
class APoZ(_ActivationCriterion):
    """1 - APoZ (Hu et al. 2016): channels whose activations are mostly exactly zero score low."""

    def statistic(self, x):
        return 1.0 - (x == 0).double().mean(1)
