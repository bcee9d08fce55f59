"""Measured damage for the latency allocation (``latency_allocation="measured"``).

The default allocation ranks channel removals across groups by the criterion's scores, normalised per layer
(:func:`.latency.totals`): an L2 norm in one layer and one in another are not the same loss, so the ranking
across groups is a guess. With ``latency_allocation="measured"`` every candidate width of every group
(the widths its latency table was timed at, down to ``layer_floor``) is priced by what it does to the model:
the group alone is cut to that width (its lowest-scoring channels, as the allocation would cut them) by
the real surgery (:meth:`~prunekit.structured.planner.Plan.apply` on a copy), and the copy runs the calibration
batches. The damage is the growth of ``loss_fn`` over the dense model's on those batches when a ``loss_fn`` is
given (the batches' targets are read), otherwise the relative squared change of the model's outputs,
``sum ||y - y_dense||^2 / sum ||y_dense||^2`` over every floating-point output tensor (no targets needed).
The allocation then takes, greedily, the move with the least damage per millisecond saved (NetAdapt and AMC
rank proposals by measured accuracy the same way; damages of different groups are taken as additive).

Cost: one surgery and ``calibration_batches`` forwards per candidate (a few dozen per group); each is computed
once per ``prunekit.prune`` call (the measured re-aims reuse them) and logged at info level.
"""
from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from .._inputs import first_tensor, run_model
from ..errors import PruningError

log = logging.getLogger(__name__)


def _tensors(out: Any) -> List[torch.Tensor]:
    """The floating-point tensors of a model output (a tensor, tuple / list, dict or Hugging Face ModelOutput)."""
    if isinstance(out, torch.Tensor):
        return [out] if out.is_floating_point() else []
    if isinstance(out, Mapping):
        return [t for v in out.values() for t in _tensors(v)]
    if isinstance(out, (tuple, list)):
        return [t for v in out for t in _tensors(v)]
    return []


def output_change(out: Any, ref: Any) -> Tuple[float, float]:
    """``(sum ||out - ref||^2, sum ||ref||^2)`` over the output tensors; a shape change is a PruningError."""
    a, b = _tensors(out), _tensors(ref)
    if len(a) != len(b) or any(x.shape != y.shape for x, y in zip(a, b)):
        raise PruningError("latency_allocation='measured': a pruned copy's outputs do not have the dense model's "
                           "shapes; pass a loss_fn that compares them, or use latency_allocation='scores'")
    num = sum(float(((x.float() - y.float()) ** 2).sum()) for x, y in zip(a, b))
    den = sum(float((y.float() ** 2).sum()) for y in b)
    return num, den


class MeasuredDamage:
    """``damage(group index, removed atoms) -> float``: the measured harm of removing those atoms of that group
    alone (module docstring), memoised. ``plan`` is a channel plan of ``model`` with nothing removed."""

    def __init__(self, model: nn.Module, plan, batches: List[Any], loss_fn: Optional[Callable] = None):
        from ..importance.calibrate import _pair, batch_inputs

        if not batches:
            raise PruningError("latency_allocation='measured' needs calibration batches: pass calibration=[(inputs, "
                               "targets), ...] (or input batches alone when no loss_fn is given)")
        self.model, self.plan, self.loss_fn = model, plan, loss_fn
        self.inputs = [batch_inputs(b) for b in batches]
        self.targets = [_pair(b, 1) for b in batches] if loss_fn is not None else None
        self.cache: Dict[Tuple[int, Tuple[int, ...]], float] = {}
        self.seconds, self.evaluated = 0.0, 0
        was = model.training
        model.eval()
        try:
            with torch.no_grad():
                self.ref = [run_model(model, x) for x in self.inputs]
                self.base = self._loss(self.ref) if loss_fn is not None else 0.0
        finally:
            model.train(was)

    def _loss(self, outputs: List[Any]) -> float:
        return sum(float(self.loss_fn(first_tensor(o), t)) for o, t in zip(outputs, self.targets)) / len(outputs)

    def __call__(self, gi: int, atoms: np.ndarray) -> float:
        key = (int(gi), tuple(sorted(int(a) for a in np.asarray(atoms).tolist())))
        if not key[1]:
            return 0.0
        if key not in self.cache:
            self.cache[key] = self._measure(*key)
        return self.cache[key]

    def _measure(self, gi: int, atoms: Tuple[int, ...]) -> float:
        t = time.perf_counter()
        g = self.plan.group(gi)
        position = {a: i for i, a in enumerate(self.plan._layout["group_atoms"][gi])}
        old = list(g.remove)
        self.plan.set_remove(gi, [position[a] for a in atoms])
        try:
            pruned = self.plan.apply(copy.deepcopy(self.model)).eval()  # shapes: checked on the final model
        finally:
            self.plan.set_remove(gi, old)
        with torch.no_grad():
            outs = [run_model(pruned, x) for x in self.inputs]
        if self.loss_fn is not None:
            value = self._loss(outs) - self.base
        else:
            num = den = 0.0
            for o, r in zip(outs, self.ref):
                n, d = output_change(o, r)
                num, den = num + n, den + d
            value = num / max(den, 1e-30)
        self.seconds += time.perf_counter() - t
        self.evaluated += 1
        return float(value)

    def summary(self) -> Dict[str, Any]:
        return {"allocation": "measured", "candidates": self.evaluated, "seconds": round(self.seconds, 3),
                "batches": len(self.inputs), "measure": "loss_fn" if self.loss_fn is not None else "output change"}
