"""One-shot and iterative pruning: N rounds of prune -> fine-tune -> evaluate, with budget rollback and rewinding."""
from __future__ import annotations

import logging
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..progress import Progress, ensure
from .common import (ModelFn, PruneFn, ScheduleResult, baseline_metrics, clone, default_evaluate_fn, default_finetune_fn,
                     default_measure_fn, default_prune_fn, rewind_weights, step_row)
from .paths import sparsity_path, step_ratios

log = logging.getLogger(__name__)


def iterative_prune(model: nn.Module, data=None, *, example_inputs: Any = None, target: float, rounds: int = 3,
                    path: str = "cubic", granularity: str = "weight", criterion: str = "l1",
                    prune_kwargs: Optional[dict] = None, finetune=None, max_accuracy_drop: Optional[float] = None,
                    rewind_state: Optional[Dict[str, torch.Tensor]] = None, loss_fn=None, teacher=None,
                    distill=None, measure_latency: bool = False, progress: Optional[Progress] = None,
                    prune_fn: Optional[PruneFn] = None, finetune_fn: Optional[ModelFn] = None,
                    evaluate_fn: Optional[ModelFn] = None, measure_fn: Optional[ModelFn] = None,
                    history: Optional[list] = None, inplace: bool = False) -> ScheduleResult:
    """Prune ``model`` to ``target`` in ``rounds`` steps along ``path`` (linear / geometric / cubic).

    Each round prunes (weights: to the cumulative sparsity; channels: the per-round ratio of the
    current smaller model, so the cumulative reduction follows the path), optionally rewinds
    the surviving weights to ``rewind_state`` (lottery ticket), fine-tunes with ``finetune``
    (a FitConfig; None = no fine-tune), then evaluates on validation. With
    ``max_accuracy_drop`` (points, e.g. 1.0), a round that drops more than that ends the run
    and the last model within budget is returned (``result.rolled_back``). Ctrl-C returns the
    best model so far with ``result.interrupted``. The default callables use ``prunekit.prune``,
    ``prunekit.train.fit`` / ``evaluate`` and ``prunekit.measure``; pass your own to override.
    """
    if rewind_state is not None and granularity != "weight":
        raise ConfigError("lottery-ticket rewinding needs granularity='weight' (channel pruning changes the shapes)")
    cumulative = sparsity_path(target, rounds, path)
    ratios = step_ratios(cumulative)
    if data is None and (evaluate_fn is None or (finetune is not None and finetune_fn is None)):
        raise ConfigError("iterative_prune needs `data` for the default evaluate / fine-tune, or your own callables")
    prune_fn = prune_fn or default_prune_fn(example_inputs, granularity, criterion=criterion, **(prune_kwargs or {}))
    finetune_fn = finetune_fn or default_finetune_fn(data, finetune, loss_fn=loss_fn, progress=progress,
                                                     teacher=teacher, distill=distill, example_inputs=example_inputs,
                                                     history=history, stage="schedule")
    evaluate_fn = evaluate_fn or default_evaluate_fn(data, loss_fn)
    measure_fn = measure_fn or default_measure_fn(example_inputs, measure_latency)
    return run_rounds(model if inplace else clone(model), cumulative, ratios, prune_fn=prune_fn,
                      finetune_fn=finetune_fn, evaluate_fn=evaluate_fn, measure_fn=measure_fn,
                      max_drop=max_accuracy_drop, rewind_state=rewind_state, progress=ensure(progress),
                      granularity=granularity)


def one_shot(model: nn.Module, data=None, *, target: float, **kwargs) -> ScheduleResult:
    """Prune once to ``target``, fine-tune, evaluate (iterative pruning with one round)."""
    kwargs.pop("rounds", None)
    kwargs.pop("path", None)
    return iterative_prune(model, data, target=target, rounds=1, path="linear", **kwargs)


def run_rounds(model: nn.Module, cumulative, ratios, *, prune_fn, finetune_fn, evaluate_fn, measure_fn,
               max_drop, rewind_state, progress: Progress, granularity: str) -> ScheduleResult:
    """The round loop shared by one-shot and iterative pruning (``model`` is modified/replaced freely)."""
    result = ScheduleResult(model=model, baseline=baseline_metrics(model, evaluate_fn, measure_fn))
    best_model, best_round = clone(model), 0
    with progress.task(f"iterative {granularity} pruning", total=len(cumulative)) as task:
        try:
            for k, (total, step) in enumerate(zip(cumulative, ratios), start=1):
                model = prune_fn(model, total=total, step=step)
                if rewind_state is not None:
                    rewind_weights(model, rewind_state)
                finetune_fn(model)
                row = step_row(k, evaluate_fn(model), measure_fn(model), result.baseline, max_drop,
                               target_sparsity=total, step_ratio=step)
                result.steps.append(row)
                task.advance()
                task.note(sparsity=total, val_acc=row["val_accuracy"], drop=row["drop_points"])
                log.info("round %d: sparsity %.3f val acc %.4f (drop %.2f points)", k, total, row["val_accuracy"],
                         row["drop_points"])
                if not row["within_budget"]:
                    result.stopped, result.rolled_back = "budget", True
                    result.message = (f"round {k} (sparsity {total:.3f}) dropped validation accuracy by "
                                      f"{row['drop_points']:.2f} points > budget {max_drop}; rolled back to round "
                                      f"{best_round} (sparsity {_sparsity_of(result, best_round):.3f})")
                    break
                best_model, best_round = clone(model), k
        except KeyboardInterrupt:
            result.stopped, result.interrupted = "interrupted", True
            result.message = f"interrupted; returning the model of round {best_round}, the last one within budget"
    result.model, result.best_round = best_model, best_round
    if result.stopped == "target":
        what = "sparsity" if granularity == "weight" else f"{granularity} reduction"
        result.message = f"reached the target {what} {cumulative[-1]:.3f} in {len(cumulative)} rounds"
    log.info(result.message)
    return result


def _sparsity_of(result: ScheduleResult, k: int) -> float:
    return 0.0 if k == 0 else result.steps[k - 1]["target_sparsity"]
