"""The ``schedule:`` recipe stage: one-shot, iterative or AGP pruning with budget rollback, from YAML."""
from __future__ import annotations

from ...errors import ConfigError
from ...schedule import SCHEDULES
from ...schedule.common import check_prune_target
from ...schedule.config import ScheduleConfig
from ...schedule.recovery import Recovery
from . import ORDER_SCHEDULE, RunContext, register_stage


def rewind_state_for(ctx: RunContext, cfg: ScheduleConfig):
    if not cfg.rewind:
        return None
    if cfg.rewind_checkpoint:
        from ...io import load
        from ...modelutils import clone_model
        from ...schedule.common import snapshot_state

        return snapshot_state(load(cfg.rewind_checkpoint, clone_model(ctx.model)))
    state = ctx.extras.get("rewind_state")
    if state is None:
        raise ConfigError("schedule.rewind needs an early checkpoint: set schedule.rewind_checkpoint to a file saved "
                          "early in training (prunekit.save), or have an earlier stage put ctx.extras['rewind_state']")
    return state


def schedule_recovery(ctx: RunContext, cfg: ScheduleConfig) -> Recovery:
    return Recovery.default(ctx.data, ctx.example_inputs, granularity=cfg.granularity, criterion=cfg.criterion,
                            prune_kwargs=cfg.prune_kwargs(), finetune=cfg.finetune, loss_fn=ctx.loss_fn,
                            teacher=ctx.teacher, distill=cfg.distill, measure_latency=cfg.measure_latency,
                            progress=ctx.progress, stage="schedule")


def schedule_kwargs(ctx: RunContext, cfg: ScheduleConfig) -> dict:
    kw = dict(target=cfg.target, max_accuracy_drop=cfg.max_accuracy_drop)
    if cfg.kind == "agp":
        kw.update(timing=cfg.agp)
    else:
        kw.update(rewind_state=rewind_state_for(ctx, cfg), progress=ctx.progress)
        if cfg.kind == "iterative":
            kw.update(rounds=cfg.rounds, path=cfg.path)
    return kw


@register_stage("schedule", config=ScheduleConfig, order=ORDER_SCHEDULE, check=check_prune_target,
                help="one-shot / iterative / AGP pruning with an accuracy budget and rollback")
def run_schedule(ctx: RunContext, cfg: ScheduleConfig) -> None:
    result = SCHEDULES.get(cfg.kind)(ctx.model, schedule_recovery(ctx, cfg), **schedule_kwargs(ctx, cfg))
    ctx.model = result.model
    ctx.history.extend(result.fit_history)  # the fine-tune epochs feed the report's curves
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

