"""The ``search:`` recipe stage: accuracy-budgeted bisection over the global ratio, or per-layer allocation."""
from __future__ import annotations

from ...schedule.common import check_prune_target
from ...schedule.recovery import Recovery
from ...search.budget import budget_search
from ...search.config import SearchConfig
from ...search.layerwise import layerwise_search
from . import ORDER_SEARCH, RunContext, register_stage


def search_recovery(ctx: RunContext, cfg: SearchConfig) -> Recovery:
    """Layerwise probes are never timed; bisection probes are with measure_latency (objective latency: predicted)."""
    latency = cfg.method == "bisection" and cfg.measure_latency and cfg.objective != "latency"
    return Recovery.default(ctx.data, ctx.example_inputs, granularity=cfg.granularity, criterion=cfg.criterion,
                            prune_kwargs=cfg.prune_kwargs(), finetune=cfg.finetune, loss_fn=ctx.loss_fn,
                            teacher=ctx.teacher, distill=cfg.distill, measure_latency=latency, progress=ctx.progress,
                            stage="search")


def run_search_config(ctx: RunContext, cfg: SearchConfig):
    recovery = search_recovery(ctx, cfg)
    if cfg.method == "layerwise":
        return layerwise_search(ctx.model, recovery, max_accuracy_drop=cfg.max_accuracy_drop, ratios=cfg.ratios,
                                exclude=cfg.exclude or None, progress=ctx.progress)
    latency = {} if cfg.objective != "latency" else {  # probes pruned to a latency cut, looked up in the table
        "example_inputs": ctx.example_inputs,
        "prune_kwargs": {**({"criterion": cfg.criterion} if cfg.criterion else {}), **cfg.prune_kwargs()}}
    return budget_search(ctx.model, recovery, max_accuracy_drop=cfg.max_accuracy_drop, objective=cfg.objective,
                         schedule=cfg.recovery, rounds=cfg.rounds, lo=cfg.lo, hi=cfg.hi, tol=cfg.tol,
                         max_probes=cfg.max_probes, progress=ctx.progress, **latency)


@register_stage("search", config=SearchConfig, order=ORDER_SEARCH, check=check_prune_target,
                help="accuracy-budgeted search: largest ratio / smallest MACs within a validation-accuracy budget")
def run_search(ctx: RunContext, cfg: SearchConfig) -> None:
    result = run_search_config(ctx, cfg)
    ctx.model = result.model
    ctx.history.extend(result.fit_history)  # the probes' fine-tune epochs feed the report's curves
    ctx.results["search"] = {"method": cfg.method, "granularity": cfg.granularity, **result.summary()}
    best = result.best or {}
    ctx.record("search", method=cfg.method, granularity=cfg.granularity, objective=cfg.objective,
               max_accuracy_drop=cfg.max_accuracy_drop, ratio=result.ratio, probes=len(result.probes),
               val_accuracy=best.get("val_accuracy"), drop_points=best.get("drop_points"),
               nonzero_params=best.get("nonzero_params"), nonzero_macs=best.get("nonzero_macs"),
               interrupted=result.interrupted, message=result.message)
    ctx.progress.message(f"search: {result.message}")  # an interrupted row makes the runner save and stop
