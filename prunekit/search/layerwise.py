"""Per-layer ratio allocation: sensitivity curves -> knapsack allocation within the budget -> verify -> shrink if needed."""
from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

from torch import nn

from ..errors import ConfigError
from ..progress import Progress, ensure
from ..schedule.common import ModelFn, baseline_metrics, clone, default_evaluate_fn, default_finetune_fn, default_measure_fn
from .allocate import allocate_ratios
from .bisect import accuracy_drop_points, within_budget
from .budget import SearchResult
from .sensitivity import SensitivityResult, sensitivity

log = logging.getLogger(__name__)


def default_allocation_prune_fn(example_inputs, granularity: str = "weight", **prune_kwargs):
    """Prune with one ratio per layer (``layer_ratios``), every other layer untouched."""
    from ..api import prune

    def fn(model: nn.Module, layer_ratios: dict) -> nn.Module:
        ratios = {name: r for name, r in layer_ratios.items() if r > 0}
        if not ratios:
            return model
        if granularity == "weight":
            return prune(model, example_inputs, granularity="weight", ratio=0.0, layer_ratios=ratios,
                         relative_to="total", **prune_kwargs)
        return prune(model, example_inputs, granularity=granularity, ratio=0.0, layer_ratios=ratios, **prune_kwargs)

    return fn


def layerwise_search(model: nn.Module, data=None, *, example_inputs: Any = None, max_accuracy_drop: float = 1.0,
                     ratios: Sequence[float] = (0.25, 0.5, 0.7, 0.8, 0.9, 0.95), granularity: str = "weight",
                     criterion: str = "l1", exclude: Optional[Sequence[str]] = None, finetune=None,
                     shrink: float = 0.5, max_tries: int = 4, loss_fn=None, teacher=None, distill=None,
                     progress: Optional[Progress] = None, sens: Optional[SensitivityResult] = None,
                     layer_prune_fn=None, allocation_prune_fn=None, finetune_fn: Optional[ModelFn] = None,
                     evaluate_fn: Optional[ModelFn] = None, measure_fn: Optional[ModelFn] = None,
                     history: Optional[list] = None) -> SearchResult:
    """Per-layer ratios with the most reduction whose accuracy drop meets ``max_accuracy_drop`` (points).

    1. sensitivity: each layer pruned alone at each of ``ratios`` (or pass ``sens``);
    2. allocation: maximise removed weights subject to the sum of single-layer drops within
       the budget (multiple-choice knapsack, :func:`allocate_ratios`);
    3. verification: prune with those ratios, fine-tune (``finetune``), evaluate; drops rarely
       add up exactly, so if the combined model misses the budget the allocation budget is
       multiplied by ``shrink`` and the step repeats (at most ``max_tries`` times).
    """
    if not 0.0 < shrink < 1.0:
        raise ConfigError(f"shrink must lie strictly between 0 and 1, got {shrink}")
    evaluate_fn = evaluate_fn or default_evaluate_fn(data, loss_fn)
    measure_fn = measure_fn or default_measure_fn(example_inputs, False)
    finetune_fn = finetune_fn or default_finetune_fn(data, finetune, loss_fn=loss_fn, progress=progress, teacher=teacher,
                                                     distill=distill, example_inputs=example_inputs, history=history,
                                                     stage="search")
    allocation_prune_fn = allocation_prune_fn or default_allocation_prune_fn(example_inputs, granularity, criterion=criterion)
    if sens is None:
        sens = sensitivity(model, data, example_inputs=example_inputs, ratios=ratios, granularity=granularity,
                           criterion=criterion, exclude=exclude, loss_fn=loss_fn, progress=progress,
                           prune_fn=layer_prune_fn, evaluate_fn=evaluate_fn)
    baseline = baseline_metrics(model, evaluate_fn, measure_fn)
    base_acc = baseline["val_accuracy"]
    probes, best, best_model, interrupted = [], None, model, sens.interrupted
    budget = max_accuracy_drop
    with ensure(progress).task("per-layer allocation", total=max_tries) as task:
        try:
            for i in range(max_tries):
                alloc = allocate_ratios(sens.drops, sens.sizes, budget)
                pruned = allocation_prune_fn(clone(model), alloc)
                finetune_fn(pruned)
                metrics = evaluate_fn(pruned)
                row = {"index": i, "allocation_budget": budget, "layer_ratios": alloc,
                       **{f"val_{k}": float(v) for k, v in metrics.items()}, **measure_fn(pruned),
                       "drop_points": accuracy_drop_points(base_acc, metrics["accuracy"])}
                row["ok"] = within_budget(base_acc, metrics["accuracy"], max_accuracy_drop)
                row["ratio"] = _weighted_ratio(alloc, sens.sizes)
                probes.append(row)
                task.advance()
                if row["ok"]:
                    best, best_model = row, pruned
                    break
                budget *= shrink
        except KeyboardInterrupt:
            interrupted = True
    res = SearchResult(model=best_model, ratio=best["ratio"] if best else 0.0, objective="ratio",
                       max_accuracy_drop=max_accuracy_drop, baseline=baseline, best=best, probes=probes,
                       interrupted=interrupted, extra={"method": "layerwise", "sensitivity": sens.summary(),
                                                       "layer_ratios": best["layer_ratios"] if best else {}})
    res.message = (f"per-layer ratios removing {res.ratio:.1%} of the prunable weights, {best['drop_points']:.2f}-point drop"
                   if best else f"no allocation met the {max_accuracy_drop}-point budget in {len(probes)} tries; "
                   "the unpruned model is kept")
    if interrupted:
        res.message = "interrupted; " + res.message
    return res


def _weighted_ratio(alloc: dict, sizes: dict) -> float:
    total = sum(sizes.get(n, 0) for n in alloc)
    return sum(r * sizes.get(n, 0) for n, r in alloc.items()) / total if total else 0.0
