"""The ``schedule:`` recipe stage: one-shot, iterative or AGP pruning with budget rollback, from YAML."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Optional

from ..errors import ConfigError
from ..recipe.stages import ORDER_SCHEDULE, RunContext, register_stage
from ..train.feature_distill import FeatureDistillConfig
from ..train.loop import FitConfig
from . import SCHEDULES
from .paths import SPARSITY_PATHS, check_fraction
from .common import PruneTargetConfig, check_prune_target

log = logging.getLogger(__name__)


@dataclass
class AGPConfig:
    """AGP timing (kind: agp), in training steps."""

    initial: float = 0.0  # s_i, sparsity when pruning starts
    start_step: int = 0  # t0
    interval: int = 50  # dt: steps between mask updates
    n_steps: Optional[int] = None  # n updates (null: end pruning after end_fraction of training)
    end_fraction: float = 0.75  # when n_steps is null: share of training spent pruning


def _quick_finetune() -> FitConfig:
    return FitConfig(epochs=2, lr=1e-3)


@dataclass
class ScheduleConfig(PruneTargetConfig):
    """Recipe ``schedule:``: how much, and when, to prune (see ``prunekit.schedule``)."""

    kind: str = "iterative"  # a name in SCHEDULES: oneshot, iterative, agp
    target: float = 0.8  # final weight sparsity (weight) / fraction of channels removed (channel)
    rounds: int = 3  # iterative: prune -> fine-tune -> evaluate rounds
    path: str = "cubic"  # iterative: linear, geometric or cubic growth of the cumulative sparsity
    max_accuracy_drop: Optional[float] = None  # budget in validation-accuracy points; beyond it roll back and stop
    finetune: FitConfig = field(default_factory=_quick_finetune)  # recovery training after each round (agp: the training run)
    distill: Optional[FeatureDistillConfig] = None  # distil from the unpruned model during fine-tuning
    rewind: bool = False  # lottery ticket: rewind surviving weights each round (weight pruning)
    rewind_checkpoint: Optional[str] = None  # early checkpoint to rewind to (default: ctx.extras["rewind_state"])
    agp: AGPConfig = field(default_factory=AGPConfig)
    measure_latency: bool = True  # time each round's model at batch 1 (results.json, report); false saves a little time

    def validate(self):
        check_fraction("schedule.target", self.target)
        if self.kind not in SCHEDULES:
            raise ConfigError(f"schedule.kind {self.kind!r} is unknown; choose one of {', '.join(SCHEDULES.names())}")
        if self.path not in SPARSITY_PATHS:
            raise ConfigError(f"schedule.path {self.path!r} is unknown; choose one of {', '.join(SPARSITY_PATHS.names())}")
        if self.rounds < 1:
            raise ConfigError(f"schedule.rounds must be >= 1, got {self.rounds}")


def rewind_state_for(ctx: RunContext, cfg: ScheduleConfig):
    if not cfg.rewind:
        return None
    if cfg.rewind_checkpoint:
        from ..io import load
        from ..modelutils import clone_model
        from .common import snapshot_state

        return snapshot_state(load(cfg.rewind_checkpoint, clone_model(ctx.model)))
    state = ctx.extras.get("rewind_state")
    if state is None:
        raise ConfigError("schedule.rewind needs an early checkpoint: set schedule.rewind_checkpoint to a file saved "
                          "early in training (prunekit.save), or have an earlier stage put ctx.extras['rewind_state']")
    return state


def schedule_kwargs(ctx: RunContext, cfg: ScheduleConfig) -> dict:
    kw = dict(example_inputs=ctx.example_inputs, target=cfg.target, criterion=cfg.criterion,
              prune_kwargs=cfg.prune_kwargs(), finetune=cfg.finetune, max_accuracy_drop=cfg.max_accuracy_drop,
              loss_fn=ctx.loss_fn, measure_latency=cfg.measure_latency, progress=ctx.progress, history=ctx.history,
              teacher=ctx.teacher, distill=cfg.distill)
    if cfg.kind == "agp":
        a = cfg.agp
        kw.update(initial=a.initial, start_step=a.start_step, interval=a.interval, n_steps=a.n_steps,
                  end_fraction=a.end_fraction, granularity=cfg.granularity)
    else:
        kw.update(granularity=cfg.granularity, rewind_state=rewind_state_for(ctx, cfg))
        if cfg.kind == "iterative":
            kw.update(rounds=cfg.rounds, path=cfg.path)
    return kw


@register_stage("schedule", config=ScheduleConfig, order=ORDER_SCHEDULE, check=check_prune_target,
                help="one-shot / iterative / AGP pruning with an accuracy budget and rollback")
def run_schedule(ctx: RunContext, cfg: ScheduleConfig) -> None:
    result = SCHEDULES.get(cfg.kind)(ctx.model, ctx.data, **schedule_kwargs(ctx, cfg))
    ctx.model = result.model
    ctx.results["schedule"] = {"kind": cfg.kind, "granularity": cfg.granularity, "target": cfg.target,
                               "path": cfg.path if cfg.kind == "iterative" else None,
                               "max_accuracy_drop": cfg.max_accuracy_drop, **result.summary()}
    kept = result.steps[result.best_round - 1] if 0 < result.best_round <= len(result.steps) else result.baseline
    ctx.record("schedule", kind=cfg.kind, granularity=cfg.granularity, target=cfg.target,
               rounds=len(result.steps), best_round=result.best_round, stopped=result.stopped,
               rolled_back=result.rolled_back, interrupted=result.interrupted, message=result.message,
               val_accuracy=kept.get("val_accuracy"), nonzero_params=kept.get("nonzero_params"),
               nonzero_macs=kept.get("nonzero_macs"))
    ctx.progress.message(f"schedule: {result.message}")  # an interrupted row makes the runner save and stop

