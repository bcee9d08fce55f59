"""SparseGPT's statistics (Frantar & Alistarh 2023): the Hessian H = 2 X X^T / tokens of each layer's inputs.

The criterion only accumulates H from what the calibration loop feeds (``"inputs"``); the reconstruction itself
(mask selection by w^2 / [H^-1]_jj^2 per column block and the OBS update of the remaining weights), run layer by
layer on the already-pruned model, is :mod:`prunekit.unstructured.sparsegpt`. ``reconstructs = True`` tells
weight pruning to take that path: the result is masks plus updated weights.

Under torchrun each process feeds its own calibration shard; the sums 2 X X^T and the token counts are summed over
the processes (:meth:`SparseGPT.all_reduce`) before H is formed and inverted, so every process reconstructs each
layer from the same H -- the one of the union of the shards -- and makes the same weight update.
"""
from __future__ import annotations

from typing import Dict

import torch

from ..errors import ConfigError, PruningError
from .base import INPUTS, WEIGHTS, Criterion, register_criterion


@register_criterion("sparsegpt")
class SparseGPT(Criterion):
    """Layer-wise OBS reconstruction; ``blocksize`` columns are masked at a time, ``damp`` x mean(diag H) is added
    to H's diagonal (``SparseGPT(blocksize=64, damp=0.05)`` as ``criterion=`` changes them)."""

    needs = frozenset({WEIGHTS, INPUTS})
    default_scope = "local"
    scopes = ("local",)  # layers are pruned one after the other, each to its own ratio: no global ranking
    reconstructs = True

    def __init__(self, blocksize: int = 128, damp: float = 0.01):
        if isinstance(blocksize, bool) or not isinstance(blocksize, int) or blocksize < 1:
            raise ConfigError(f"sparsegpt blocksize must be a positive integer, got {blocksize!r}")
        if isinstance(damp, bool) or not isinstance(damp, (int, float)) or not damp > 0:
            raise ConfigError(f"sparsegpt damp must be a positive fraction of mean(diag H), got {damp!r}")
        self.blocksize, self.damp = blocksize, float(damp)
        self._h: Dict[str, torch.Tensor] = {}
        self._n: Dict[str, int] = {}

    def reset(self):
        self._h.clear()
        self._n.clear()

    def observe_input(self, name, inputs):
        x = inputs.double()
        h = 2.0 * x.T @ x
        self._h[name] = self._h[name] + h if name in self._h else h
        self._n[name] = self._n.get(name, 0) + x.shape[0]

    def all_reduce(self, sums):
        total = sums({**{("h", n): h for n, h in self._h.items()},
                      **{("n", n): torch.tensor(c, dtype=torch.int64) for n, c in self._n.items()}})
        self._h = {n: v for (kind, n), v in total.items() if kind == "h"}
        self._n = {n: int(v) for (kind, n), v in total.items() if kind == "n"}

    def hessian(self, name: str) -> torch.Tensor:
        """H = 2 X X^T / tokens of weight ``name`` (float64, ``columns x columns``)."""
        if name not in self._h:
            raise PruningError(f"sparsegpt has no Hessian for {name!r}: pass calibration=<batches>")
        return self._h[name] / max(1, self._n[name])

    def weight_scores(self, name, weight):
        raise PruningError("criterion 'sparsegpt' does not score weights on their own: it reconstructs each layer "
                           "(prunekit.prune(..., granularity='weight', criterion='sparsegpt', calibration=...))")

    def __repr__(self) -> str:
        return f"SparseGPT(blocksize={self.blocksize}, damp={self.damp})"
