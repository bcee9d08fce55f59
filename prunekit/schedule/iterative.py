"""One-shot and iterative pruning: N rounds of prune -> fine-tune -> evaluate, with budget rollback and rewinding."""
from __future__ import annotations

import logging
from typing import Callable, Dict, Optional

import torch
from torch import nn

from ..errors import ConfigError
from ..progress import Progress, ensure
from .common import ScheduleResult, baseline_metrics, check_metrics, clone, rewind_weights, step_row
from .recovery import Recovery, check_recovery, run_finetune
from .paths import sparsity_path, step_ratios

log = logging.getLogger(__name__)


def iterative_prune(model: nn.Module, recovery: Recovery, *, target: float, rounds: int = 3, path: str = "cubic",
                    max_accuracy_drop: Optional[float] = None, rewind_state: Optional[Dict[str, torch.Tensor]] = None,
                    on_round: Optional[Callable[[dict], None]] = None, progress: Optional[Progress] = None,
                    inplace: bool = False) -> ScheduleResult:
    """Prune ``model`` to ``target`` in ``rounds`` steps along ``path`` (linear / geometric / cubic).

    Round k calls, in order: ``recovery.prune(model, total=s_k, step=(s_k - s_{k-1}) / (1 - s_{k-1}))``
    with ``s_k`` the cumulative path; the rewind to ``rewind_state`` (lottery ticket, weight pruning
    only); ``recovery.finetune``; ``recovery.evaluate`` and ``recovery.measure``. The round's row goes
    to ``result.steps`` and ``on_round(row)``; its fit history to ``result.histories``. The unpruned
    model is evaluated and measured first (``result.baseline``). With ``max_accuracy_drop``
    (points, e.g. 1.0) a round that drops more ends the run and the last model within budget is
    returned (``result.rolled_back``). Ctrl-C (or an interrupted fit) returns the best model so far
    with ``result.interrupted``. ``model`` is copied first unless ``inplace``.
    """
    check_recovery(recovery, "iterative_prune")
    if rewind_state is not None and recovery.granularity != "weight":
        raise ConfigError("lottery-ticket rewinding needs granularity='weight' (channel pruning changes the shapes)")
    cumulative = sparsity_path(target, rounds, path)
    ratios = step_ratios(cumulative)
    return run_rounds(model if inplace else clone(model), cumulative, ratios, recovery, max_drop=max_accuracy_drop,
                      rewind_state=rewind_state, on_round=on_round, progress=ensure(progress))


def one_shot(model: nn.Module, recovery: Recovery, *, target: float, **kwargs) -> ScheduleResult:
    """Prune once to ``target``, fine-tune, evaluate (iterative pruning with one round)."""
    kwargs.pop("rounds", None)
    kwargs.pop("path", None)
    return iterative_prune(model, recovery, target=target, rounds=1, path="linear", **kwargs)


def run_rounds(model: nn.Module, cumulative, ratios, recovery: Recovery, *, max_drop, rewind_state, on_round,
               progress: Progress) -> ScheduleResult:
    """The round loop shared by one-shot and iterative pruning (``model`` is modified/replaced freely)."""
    granularity = recovery.granularity
    result = ScheduleResult(model=model, baseline=baseline_metrics(model, recovery))
    best_model, best_round = clone(model), 0
    with progress.task(f"iterative {granularity} pruning", total=len(cumulative)) as task:
        try:
            for k, (total, step) in enumerate(zip(cumulative, ratios), start=1):
                model = recovery.prune(model, total=total, step=step)
                if rewind_state is not None:
                    rewind_weights(model, rewind_state)
                rows, interrupted = run_finetune(recovery, model)
                result.histories.append(rows)
                if interrupted:
                    raise KeyboardInterrupt
                row = step_row(k, check_metrics(recovery.evaluate(model)), recovery.measure(model), result.baseline,
                               max_drop, target_sparsity=total, step_ratio=step)
                result.steps.append(row)
                if on_round is not None:
                    on_round(row)
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
