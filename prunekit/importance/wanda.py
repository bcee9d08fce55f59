"""Wanda (Sun et al. 2023, "A Simple and Effective Pruning Approach for Large Language Models"): |W| x ||X||.

Per weight ``W[i, j]`` the score is ``|W[i, j]| * ||X[:, j]||_2``, where ``X[:, j]`` is input feature ``j`` of
the layer over every calibration token (all samples and positions of all calibration batches; for a conv, the
unfolded input, see :mod:`prunekit.importance.inputs`; ``weight`` is always ``(out, in, ...)``: weight pruning
hands a Hugging Face ``Conv1D``'s ``(in, out)`` weight over transposed). Scores are compared per output row by
default (``default_scope = "row"``): every row loses the same fraction of its weights, as in the paper. No weight is
updated and no gradient is computed: one forward per calibration batch. Under torchrun the per-column sums of
squares are summed over the processes before the square root, so the norms are over every process's tokens.
"""
from __future__ import annotations

from typing import Dict

import torch

from ..errors import PruningError
from .base import INPUTS, WEIGHTS, Criterion, register_criterion
from .inputs import weight_matrix


@register_criterion("wanda")
class Wanda(Criterion):
    """|W| times the L2 norm of the layer's input feature it multiplies (over all calibration tokens)."""

    needs = frozenset({WEIGHTS, INPUTS})
    default_scope = "row"

    def __init__(self):
        self._sq: Dict[str, torch.Tensor] = {}  # per weight key: sum over tokens of x_j^2, per column j

    def reset(self):
        self._sq.clear()

    def observe_input(self, name, inputs):
        sq = inputs.double().pow(2).sum(0)
        self._sq[name] = self._sq[name] + sq if name in self._sq else sq

    def all_reduce(self, sums):
        self._sq = sums(self._sq)

    def input_norms(self, name: str) -> torch.Tensor:
        """``||X[:, j]||_2`` per input column ``j`` of weight ``name``."""
        if name not in self._sq:
            raise PruningError(f"wanda has no input statistics for {name!r}: pass calibration=<batches> so the "
                               "layer's inputs can be observed")
        return self._sq[name].sqrt()

    def weight_scores(self, name, weight):
        norms = self.input_norms(name)
        mat = weight_matrix(None, weight.detach())
        if mat.shape[1] != norms.numel():
            raise PruningError(f"wanda: {name!r} has {mat.shape[1]} input columns but its observed inputs have "
                               f"{norms.numel()} features")
        return (mat.abs().double() * norms.to(mat.device).unsqueeze(0)).float().reshape(weight.shape)
