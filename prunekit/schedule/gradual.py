"""Gradual pruning during training (AGP, Zhu & Gupta 2017): masks raised every dt steps along the cubic schedule."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, replace
from typing import Any, Callable, Optional

from torch import nn

from ..errors import ConfigError
from .common import ScheduleResult, baseline_metrics, check_metrics, clone, no_restore_best, step_row
from .recovery import FitFinetune, Recovery, check_recovery
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


@dataclass
class AGPConfig:
    """AGP timing (kind: agp), in training steps."""

    initial: float = 0.0  # s_i, sparsity when pruning starts
    start_step: int = 0  # t0
    interval: Optional[int] = 50  # dt: steps between mask updates (null: about 20 updates over the pruning window)
    n_steps: Optional[int] = None  # n updates (null: end pruning after end_fraction of training)
    end_fraction: float = 0.75  # when n_steps is null: share of training spent pruning


def agp_prune(model: nn.Module, recovery: Recovery, *, final: float, timing: Optional[AGPConfig] = None,
              max_accuracy_drop: Optional[float] = None, callbacks=(), on_round: Optional[Callable[[dict], None]] = None,
              inplace: bool = False) -> ScheduleResult:
    """Train with ``recovery.finetune`` while weight sparsity rises from ``timing.initial`` to ``final`` (AGP).

    ``recovery.finetune`` must be a :class:`FitFinetune` (``Recovery.default`` builds one): the mask
    updates are laid out over its training steps, and its config (FitConfig() when None) is used
    with ``restore_best`` off, since restoring an earlier epoch would undo masks. Masks are set by
    ``recovery.prune(model, total=s_t, step=(s_t - s_prev) / (1 - s_prev), inplace=True)`` every
    ``timing.interval`` (dt) steps from ``timing.start_step`` (t0) for ``timing.n_steps`` (n)
    updates; by default n is chosen so pruning ends after ``timing.end_fraction`` of training;
    ``interval=None`` spreads about 20 updates over that window. Each epoch end adds a row to
    ``result.steps`` (and ``on_round(row)``), then one final row of the evaluated and measured
    model. With ``max_accuracy_drop`` the run ends with the sparsest epoch-end model within budget
    (rolled back if the final one is not). ``callbacks`` are more fit callbacks. Weight granularity
    only: channel removal would change the optimiser's parameters mid-training (use ``iterative_prune``).
    """
    from ..train.loop import FitConfig

    check_recovery(recovery, "agp_prune")
    if recovery.granularity != "weight":
        raise ConfigError("AGP gradual pruning supports granularity 'weight' only; use iterative_prune (kind: iterative) "
                          "for channels")
    if not isinstance(recovery.finetune, FitFinetune):
        raise ConfigError("AGP prunes during training, so recovery.finetune must be a prunekit.schedule.FitFinetune "
                          f"(Recovery.default builds one), got {type(recovery.finetune).__name__}")
    t = timing or AGPConfig()
    train = replace(recovery.finetune, config=no_restore_best(recovery.finetune.config or FitConfig()), stage="agp")
    if train.data is None:
        raise ConfigError("AGP trains on data; pass it to Recovery.default")
    cfg = train.config
    steps_per_epoch = math.ceil(len(train.data.x_train) / cfg.batch_size)
    if cfg.max_steps_per_epoch is not None:
        steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
    total_steps = cfg.epochs * steps_per_epoch
    interval, n_steps = t.interval, t.n_steps
    if interval is None:
        interval = max(1, int((t.end_fraction * total_steps - t.start_step) // (n_steps or 20)))
    if n_steps is None:
        n_steps = max(1, int((t.end_fraction * total_steps - t.start_step) // interval))
    if t.start_step + n_steps * interval > total_steps:
        raise ConfigError(f"AGP ends at step {t.start_step + n_steps * interval} but training has only {total_steps} "
                          "steps; lower interval / n_steps / start_step or train for more epochs")
    original = clone(model)  # returned if no epoch meets the budget
    work = model if inplace else clone(model)
    result = ScheduleResult(model=work, baseline=baseline_metrics(work, recovery))
    prune_to = _InPlacePrune(recovery.prune)
    if t.initial > 0:
        prune_to(work, t.initial)
    agp = AGPCallback(prune_to, final=final, initial=t.initial, start=t.start_step, n_steps=n_steps, interval=interval,
                      baseline_accuracy=result.baseline["val_accuracy"], max_drop=max_accuracy_drop)

    def report(event: str, state: dict) -> None:  # after agp: the epoch's row is in agp.epochs
        if event == "epoch_end":
            result.steps.append(epoch_row(agp.epochs[-1], result.baseline["val_accuracy"]))
            if on_round is not None:
                on_round(result.steps[-1])

    fit_res = train(work, callbacks=[agp, report, *callbacks])
    result.histories.append(list(fit_res.history))
    return finish(result, work, agp, fit_res.interrupted, final, recovery, max_accuracy_drop, original, on_round)


class _InPlacePrune:
    """``(model, sparsity)`` for :class:`AGPCallback`: ``prune(total=s, step=share of the rest)`` in place."""

    def __init__(self, prune):
        self.prune, self.current = prune, 0.0

    def __call__(self, model: nn.Module, sparsity: float) -> None:
        step = (sparsity - self.current) / (1.0 - self.current) if self.current < 1.0 else 0.0
        self.prune(model, total=sparsity, step=step, inplace=True)
        self.current = sparsity


def epoch_row(e: dict, baseline_accuracy: float) -> dict:
    return {"round": e["epoch"], "epoch": e["epoch"], "target_sparsity": e["sparsity"], "val_accuracy": e["val_accuracy"],
            "within_budget": e["within_budget"], "drop_points": accuracy_drop_points(baseline_accuracy, e["val_accuracy"])}


def finish(result: ScheduleResult, work: nn.Module, agp: AGPCallback, interrupted: bool, final: float,
           recovery: Recovery, max_drop: Optional[float], original: nn.Module, on_round) -> ScheduleResult:
    """The final row, verdict, rollback / interrupt handling (the epoch rows are in ``result.steps`` already)."""
    last = step_row(len(agp.epochs), check_metrics(recovery.evaluate(work)), recovery.measure(work), result.baseline,
                    max_drop, target_sparsity=agp.current, updates=len(agp.updates))
    result.steps.append({**last, "final": True})
    if on_round is not None:
        on_round(result.steps[-1])
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


def agp_schedule(model: nn.Module, recovery: Recovery, *, target: float, **kwargs) -> ScheduleResult:
    """The SCHEDULES entry: :func:`agp_prune` with the common ``target`` argument as the final sparsity."""
    for key in ("rounds", "path"):
        kwargs.pop(key, None)
    kwargs.pop("progress", None)  # AGP's progress is its training run's (recovery.finetune.progress)
    if kwargs.pop("rewind_state", None) is not None:
        raise ConfigError("AGP prunes during one training run; rewind_state does not apply (use kind: iterative)")
    return agp_prune(model, recovery, final=target, **kwargs)
