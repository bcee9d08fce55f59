"""Accuracy-budgeted search ("joint pruning"): the most pruning that still meets an accuracy budget after recovery."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Optional

from torch import nn

from ..errors import ConfigError
from ..progress import Progress, ensure
from ..schedule.common import (ModelFn, baseline_metrics, clone, default_evaluate_fn, default_finetune_fn,
                               default_measure_fn)
from .bisect import CachedEvaluator, Probe, accuracy_drop_points, bisect_ratio, within_budget

log = logging.getLogger(__name__)

OBJECTIVES = ("ratio", "macs", "latency")
RECOVERIES = ("oneshot", "agp", "iterative")  # how a probe reaches its ratio before it is judged


@dataclass
class SearchResult:
    """The chosen model and every probe that led to it."""

    model: nn.Module  # best pruned + recovered model within budget (the input model if none was)
    ratio: float  # its pruning ratio (0.0 if no probe met the budget)
    objective: str  # what "best" meant: largest ratio, smallest MACs or smallest latency
    max_accuracy_drop: float  # the budget, in validation-accuracy points
    baseline: dict = field(default_factory=dict)  # unpruned validation metrics and size
    best: Optional[dict] = None  # the winning probe's row
    probes: list = field(default_factory=list)  # every evaluated setting, in order
    interrupted: bool = False  # Ctrl-C ended the search; the model is the best so far
    message: str = ""
    extra: dict = field(default_factory=dict)  # method-specific details (e.g. per-layer ratios)

    def summary(self) -> dict:
        return {"ratio": self.ratio, "objective": self.objective, "max_accuracy_drop": self.max_accuracy_drop,
                "baseline": self.baseline, "best": self.best, "probes": self.probes, "interrupted": self.interrupted,
                "message": self.message, **self.extra}


def objective_key(objective: str, granularity: str) -> str:
    if objective == "macs":
        return "nonzero_macs" if granularity == "weight" else "macs"
    return "latency_ms" if objective == "latency" else "ratio"


def better(p: dict, q: Optional[dict], key: str) -> bool:
    """Is probe ``p`` better than ``q`` for the objective: larger ratio, or smaller MACs / latency."""
    if q is None:
        return True
    return p[key] > q[key] if key == "ratio" else p[key] < q[key]


def default_ratio_prune_fn(example_inputs, granularity: str, **prune_kwargs) -> Callable[[nn.Module, float], nn.Module]:
    from ..api import prune

    def fn(model: nn.Module, ratio: float) -> nn.Module:
        if granularity == "weight":
            return prune(model, example_inputs, granularity="weight", ratio=ratio, relative_to="total", **prune_kwargs)
        return prune(model, example_inputs, granularity=granularity, ratio=ratio, **prune_kwargs)

    return fn


def budget_search(model: nn.Module, data=None, *, example_inputs: Any = None, max_accuracy_drop: float = 1.0,
                  objective: str = "ratio", granularity: str = "weight", criterion: str = "l1",
                  prune_kwargs: Optional[dict] = None, finetune=None, lo: float = 0.0, hi: float = 0.99,
                  tol: float = 0.01, max_probes: int = 10, loss_fn=None, teacher=None, distill=None,
                  measure_latency: Optional[bool] = None, progress: Optional[Progress] = None,
                  recovery: str = "oneshot", rounds: int = 3,
                  prune_fn=None, finetune_fn: Optional[ModelFn] = None, evaluate_fn: Optional[ModelFn] = None,
                  measure_fn: Optional[ModelFn] = None, history: Optional[list] = None) -> SearchResult:
    """Bisection over the global pruning ratio: largest ratio (or smallest MACs / latency) whose validation
    accuracy, after a short recovery fine-tune (``finetune``, a FitConfig), is within ``max_accuracy_drop``
    points of the unpruned model.

    Each probe prunes a fresh copy of ``model`` at a ratio, fine-tunes, evaluates and measures;
    results are cached by ratio and every probe is returned in ``result.probes``. Accuracy is
    assumed to fall with the ratio (the search is a bisection); for ``objective="macs"`` /
    ``"latency"`` the winner is the feasible probe with the smallest non-zero MACs / latency.
    ``recovery`` says how a probe reaches its ratio: ``"oneshot"`` (prune, then fine-tune),
    ``"agp"`` (weights pruned gradually along the AGP schedule *during* the fine-tune) or
    ``"iterative"`` (``rounds`` prune / fine-tune rounds on a cubic path, each with ``finetune``).
    Ctrl-C returns the best model found so far with ``result.interrupted``.
    """
    if objective not in OBJECTIVES:
        raise ConfigError(f"search objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if recovery not in RECOVERIES:
        raise ConfigError(f"search recovery must be one of {', '.join(RECOVERIES)}, got {recovery!r}")
    if recovery == "agp" and granularity != "weight":
        raise ConfigError("recovery 'agp' prunes weights gradually; use 'oneshot' or 'iterative' for channel pruning")
    if max_accuracy_drop < 0:
        raise ConfigError(f"max_accuracy_drop must be >= 0 points, got {max_accuracy_drop}")
    if data is None and (evaluate_fn is None or (finetune is not None and finetune_fn is None)):
        raise ConfigError("budget_search needs `data` for the default evaluate / fine-tune, or your own callables")
    latency = objective == "latency" if measure_latency is None else measure_latency
    prune_fn = prune_fn or default_ratio_prune_fn(example_inputs, granularity, criterion=criterion, **(prune_kwargs or {}))
    finetune_fn = finetune_fn or default_finetune_fn(data, finetune, loss_fn=loss_fn, progress=progress, teacher=teacher,
                                                     distill=distill, example_inputs=example_inputs, history=history,
                                                     stage="search")
    evaluate_fn = evaluate_fn or default_evaluate_fn(data, loss_fn)
    measure_fn = measure_fn or default_measure_fn(example_inputs, latency)
    baseline = baseline_metrics(model, evaluate_fn, measure_fn)
    key = objective_key(objective, granularity)
    state = {"best": None, "model": None}

    reach = make_reach(recovery, model, data, prune_fn, finetune_fn, example_inputs=example_inputs, finetune=finetune,
                       granularity=granularity, criterion=criterion, prune_kwargs=prune_kwargs, rounds=rounds,
                       loss_fn=loss_fn, teacher=teacher, distill=distill, progress=progress, history=history,
                       evaluate_fn=evaluate_fn, measure_fn=measure_fn)

    def evaluate_ratio(ratio: float):
        pruned = reach(ratio)
        metrics = evaluate_fn(pruned)
        row = {**{f"val_{k}": float(v) for k, v in metrics.items()}, **measure_fn(pruned),
               "drop_points": accuracy_drop_points(baseline["val_accuracy"], metrics["accuracy"])}
        ok = within_budget(baseline["val_accuracy"], metrics["accuracy"], max_accuracy_drop)
        if ok and better({**row, "ratio": ratio}, state["best"], key):
            state["best"], state["model"] = {**row, "ratio": ratio}, pruned
        return float(metrics["accuracy"]), row

    progress = ensure(progress)
    with progress.task(f"budget search ({granularity}, <= {max_accuracy_drop} pt)", total=max_probes) as task:
        def on_probe(p: Probe) -> None:
            task.advance()
            task.note(ratio=p.ratio, val_acc=p.accuracy, ok=p.ok)

        res = bisect_ratio(CachedEvaluator(evaluate_ratio), baseline=baseline["val_accuracy"],
                           max_drop_points=max_accuracy_drop, lo=lo, hi=hi, tol=tol, max_probes=max_probes,
                           on_probe=on_probe)
    return _result(model, res, state, baseline, objective, max_accuracy_drop)


def make_reach(recovery: str, model: nn.Module, data, prune_fn, finetune_fn, *, rounds: int, **kw):
    """``ratio -> pruned and recovered copy of model`` for the chosen recovery."""
    if recovery == "oneshot":
        def reach(ratio: float) -> nn.Module:
            pruned = prune_fn(clone(model), ratio)
            finetune_fn(pruned)
            return pruned
    elif recovery == "agp":
        from ..schedule.gradual import agp_prune

        def reach(ratio: float) -> nn.Module:
            return agp_prune(model, data, final=ratio, interval=None, example_inputs=kw["example_inputs"],
                             finetune=kw["finetune"], criterion=kw["criterion"], prune_kwargs=kw["prune_kwargs"],
                             loss_fn=kw["loss_fn"], teacher=kw["teacher"], distill=kw["distill"],
                             progress=kw["progress"], history=kw["history"], evaluate_fn=kw["evaluate_fn"],
                             measure_fn=kw["measure_fn"]).model
    else:
        from ..schedule.iterative import iterative_prune

        def reach(ratio: float) -> nn.Module:
            return iterative_prune(model, data, target=ratio, rounds=rounds, path="cubic", finetune_fn=finetune_fn,
                                   **{k: kw[k] for k in ("example_inputs", "granularity", "criterion", "prune_kwargs",
                                                         "loss_fn", "evaluate_fn", "measure_fn")}).model
    return reach


def _result(model, res, state, baseline, objective, max_drop) -> SearchResult:
    probes = [p.as_dict() for p in res.probes]
    best = state["best"]
    out = SearchResult(model=state["model"] if best else model, ratio=best["ratio"] if best else 0.0,
                       objective=objective, max_accuracy_drop=max_drop, baseline=baseline, best=best,
                       probes=probes, interrupted=res.interrupted)
    if best is None:
        out.message = f"no probed ratio met the {max_drop}-point budget; the unpruned model is kept"
    else:
        out.message = (f"best ratio {best['ratio']:.4f} ({len(probes)} probes): validation accuracy "
                       f"{best['val_accuracy']:.4f} ({best['drop_points']:.2f}-point drop, budget {max_drop})")
    if res.interrupted:
        out.message = "interrupted; " + out.message
    log.info(out.message)
    return out
