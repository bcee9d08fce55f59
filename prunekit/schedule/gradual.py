"""Gradual pruning during training (AGP, Zhu & Gupta 2017): masks raised every dt steps along the cubic schedule."""
from __future__ import annotations

import logging
import math
from typing import Any, Callable, Optional

from torch import nn

from ..errors import ConfigError
from ..progress import Progress, ensure
from .common import (ModelFn, ScheduleResult, baseline_metrics, clone, default_evaluate_fn, default_measure_fn,
                     no_restore_best, step_row)
from .budget import accuracy_drop_points, within_budget
from .paths import agp_sparsity

log = logging.getLogger(__name__)


class AGPCallback:
    """Fit callback: at steps t0, t0+dt, ..., t0+n*dt set the weight sparsity to the AGP value s_t.

    ``prune_fn(model, sparsity)`` must prune *in place* (the optimiser holds the parameters).
    On ``epoch_end`` it keeps a copy of the model when validation accuracy is within the
    budget, so the run can roll back to it.
    """

    def __init__(self, prune_fn: Callable[[nn.Module, float], Any], *, final: float, initial: float = 0.0,
                 start: int = 0, n_steps: int, interval: int, baseline_accuracy: Optional[float] = None,
                 max_drop: Optional[float] = None):
        self.prune_fn = prune_fn
        self.kw = dict(initial=initial, final=final, start=start, n_steps=n_steps, interval=interval)
        self.baseline_accuracy = baseline_accuracy  # validation accuracy of the unpruned model
        self.max_drop = max_drop  # budget in accuracy points (None: no budget)
        self.current = float(initial)  # sparsity of the masks now
        self.updates: list = []  # (step, sparsity) of every mask update
        self.epochs: list = []  # (epoch, sparsity, val accuracy, within budget)
        self.best_model: Optional[nn.Module] = None  # last epoch-end model within budget
        self.best_sparsity = 0.0

    def is_update_step(self, t: int) -> bool:
        start, n, dt = self.kw["start"], self.kw["n_steps"], self.kw["interval"]
        return start <= t <= start + n * dt and (t - start) % dt == 0

    def __call__(self, event: str, state: dict) -> None:
        if event == "step" and self.is_update_step(state["step"]):
            s = agp_sparsity(state["step"], **self.kw)
            if s > self.current + 1e-12:
                self.prune_fn(state["model"], s)
                self.current = s
                self.updates.append((state["step"], s))
        elif event == "epoch_end":
            acc = float(state["val"]["accuracy"])
            ok = self.max_drop is None or within_budget(self.baseline_accuracy, acc, self.max_drop)
            self.epochs.append({"epoch": state["epoch"], "sparsity": self.current, "val_accuracy": acc, "within_budget": ok})
            if ok and self.current >= self.best_sparsity:
                self.best_model, self.best_sparsity = clone(state["model"]), self.current


def default_inplace_prune_fn(example_inputs, **prune_kwargs) -> Callable[[nn.Module, float], Any]:
    from ..api import prune

    def fn(model: nn.Module, sparsity: float) -> None:
        prune(model, example_inputs, granularity="weight", ratio=sparsity, relative_to="total", inplace=True,
              **prune_kwargs)

    return fn


def agp_prune(model: nn.Module, data, *, example_inputs: Any = None, final: float, initial: float = 0.0,
              finetune=None, start_step: int = 0, interval: Optional[int] = 50, n_steps: Optional[int] = None,
              end_fraction: float = 0.75, criterion: str = "l1", prune_kwargs: Optional[dict] = None,
              max_accuracy_drop: Optional[float] = None, loss_fn=None, measure_latency: bool = False,
              progress: Optional[Progress] = None, prune_fn=None, evaluate_fn: Optional[ModelFn] = None,
              measure_fn: Optional[ModelFn] = None, history: Optional[list] = None, inplace: bool = False,
              teacher: Optional[nn.Module] = None, distill=None, callbacks=()) -> ScheduleResult:
    """Train with ``finetune`` (a FitConfig) while weight sparsity rises from ``initial`` to ``final`` (AGP).

    Masks are updated every ``interval`` (dt) steps from ``start_step`` (t0) for ``n_steps`` (n)
    updates; by default n is chosen so pruning ends after ``end_fraction`` of training, leaving
    the rest to recover; ``interval=None`` spreads about 20 updates over that window.
    ``distill`` (a FeatureDistillConfig) with ``teacher`` distils during
    training. The masks are never undone by "best epoch" restoring. With
    ``max_accuracy_drop`` the run ends with the sparsest epoch-end model within budget
    (rolled back if the final one is not). Weight granularity only: channel removal would
    change the optimiser's parameters mid-training (use ``iterative_prune`` for channels).
    """
    from ..train.loop import FitConfig, fit

    cfg = no_restore_best(finetune or FitConfig())
    steps_per_epoch = math.ceil(len(data.x_train) / cfg.batch_size)
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total_steps = cfg.epochs * steps_per_epoch
    if interval is None:
        interval = max(1, int((end_fraction * total_steps - start_step) // (n_steps or 20)))
    if n_steps is None:
        n_steps = max(1, int((end_fraction * total_steps - start_step) // interval))
    if start_step + n_steps * interval > total_steps:
        raise ConfigError(f"AGP ends at step {start_step + n_steps * interval} but training has only {total_steps} steps; "
                          "lower interval / n_steps / start_step or train for more epochs")
    original = clone(model)  # returned if no epoch meets the budget
    work = model if inplace else clone(model)
    prune_fn = prune_fn or default_inplace_prune_fn(example_inputs, criterion=criterion, **(prune_kwargs or {}))
    evaluate_fn = evaluate_fn or default_evaluate_fn(data, loss_fn)
    measure_fn = measure_fn or default_measure_fn(example_inputs, measure_latency)
    result = ScheduleResult(model=work, baseline=baseline_metrics(work, evaluate_fn, measure_fn))
    if initial > 0:
        prune_fn(work, initial)
    agp = AGPCallback(prune_fn, final=final, initial=initial, start=start_step, n_steps=n_steps, interval=interval,
                      baseline_accuracy=result.baseline["val_accuracy"], max_drop=max_accuracy_drop)
    distiller = None
    if distill is not None:
        if teacher is None:
            raise ConfigError("AGP with distillation needs the unpruned model as teacher")
        distiller = distill.build(teacher, work, example_inputs)
    try:
        fit_res = fit(work, data, cfg, loss_fn=loss_fn, progress=ensure(progress), callbacks=[agp, *callbacks],
                      distiller=distiller, stage="agp")
    finally:
        if distiller is not None:
            distiller.close()
    if history is not None:
        history.extend(fit_res.history)
    return finish(result, work, agp, fit_res.interrupted, final, evaluate_fn, measure_fn, max_accuracy_drop, original)


def finish(result: ScheduleResult, work: nn.Module, agp: AGPCallback, interrupted: bool, final: float,
           evaluate_fn: ModelFn, measure_fn: ModelFn, max_drop: Optional[float], original: nn.Module) -> ScheduleResult:
    """Rows per epoch, final verdict, rollback / interrupt handling."""
    for e in agp.epochs:
        result.steps.append({"round": e["epoch"], "epoch": e["epoch"], "target_sparsity": e["sparsity"],
                             "val_accuracy": e["val_accuracy"], "within_budget": e["within_budget"],
                             "drop_points": accuracy_drop_points(result.baseline["val_accuracy"], e["val_accuracy"])})
    last = step_row(len(agp.epochs), evaluate_fn(work), measure_fn(work), result.baseline, max_drop,
                    target_sparsity=agp.current, updates=len(agp.updates))
    result.steps.append({**last, "final": True})
    result.best_round = len(agp.epochs)
    reached = agp.current >= final - 1e-9
    if interrupted:
        result.stopped, result.interrupted = "interrupted", True
        keep_best = max_drop is not None and not last["within_budget"] and agp.best_model is not None
        result.model = agp.best_model if keep_best else work
        result.message = f"interrupted at sparsity {agp.current:.3f}; returning the " + \
            (f"last epoch model within budget (sparsity {agp.best_sparsity:.3f})" if keep_best else "current model")
    elif last["within_budget"]:
        result.stopped = "target" if reached else "end_of_training"
        result.message = f"AGP reached sparsity {agp.current:.3f} with a {last['drop_points']:.2f}-point drop"
    else:
        result.stopped, result.rolled_back = "budget", True
        if agp.best_model is not None:
            result.model = agp.best_model
            result.best_round = max(e["epoch"] for e in agp.epochs if e["within_budget"] and e["sparsity"] == agp.best_sparsity)
            where = f"the epoch {result.best_round} model (sparsity {agp.best_sparsity:.3f})"
        else:
            result.model, result.best_round = original, 0
            where = "no epoch met it: the unpruned input model"
        result.message = (f"final sparsity {agp.current:.3f} dropped validation accuracy by {last['drop_points']:.2f} "
                          f"points > budget {max_drop}; rolled back to {where}")
    log.info(result.message)
    return result



def agp_schedule(model: nn.Module, data=None, *, target: float, **kwargs) -> ScheduleResult:
    """The SCHEDULES entry: :func:`agp_prune` with the common ``target`` argument as the final sparsity."""
    for key in ("rounds", "path", "granularity", "rewind_state", "finetune_fn"):
        value = kwargs.pop(key, None)
        if key == "granularity" and value not in (None, "weight"):
            raise ConfigError("AGP gradual pruning supports granularity 'weight' only; use kind: iterative for channels")
        if key in ("rewind_state", "finetune_fn") and value is not None:
            raise ConfigError(f"AGP prunes during one training run; {key} does not apply (use kind: iterative)")
    return agp_prune(model, data, final=target, **kwargs)
