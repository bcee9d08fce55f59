"""The ``search:`` recipe stage: accuracy-budgeted bisection over the global ratio, or per-layer allocation."""
from __future__ import annotations

from ...schedule.common import check_prune_target
from ...search.budget import budget_search
from ...search.config import SearchConfig
from ...search.layerwise import layerwise_search
from . import ORDER_SEARCH, RunContext, register_stage


def run_search_config(ctx: RunContext, cfg: SearchConfig):
    common = dict(example_inputs=ctx.example_inputs, max_accuracy_drop=cfg.max_accuracy_drop,
                  granularity=cfg.granularity, criterion=cfg.criterion, finetune=cfg.finetune, loss_fn=ctx.loss_fn,
                  teacher=ctx.teacher, distill=cfg.distill, progress=ctx.progress, history=ctx.history)
    if cfg.method == "layerwise":
        return layerwise_search(ctx.model, ctx.data, ratios=cfg.ratios, exclude=cfg.exclude or None, **common)
    return budget_search(ctx.model, ctx.data, objective=cfg.objective, prune_kwargs=cfg.prune_kwargs(), lo=cfg.lo,
                         hi=cfg.hi, tol=cfg.tol, max_probes=cfg.max_probes, measure_latency=cfg.measure_latency or cfg.objective == "latency",
                         recovery=cfg.recovery, rounds=cfg.rounds, **common)


@register_stage("search", config=SearchConfig, order=ORDER_SEARCH, check=check_prune_target,
                help="accuracy-budgeted search: largest ratio / smallest MACs within a validation-accuracy budget")
def run_search(ctx: RunContext, cfg: SearchConfig) -> None:
    result = run_search_config(ctx, cfg)
    ctx.model = result.model
    ctx.results["search"] = {"method": cfg.method, "granularity": cfg.granularity, **result.summary()}
    best = result.best or {}
    ctx.record("search", method=cfg.method, granularity=cfg.granularity, objective=cfg.objective,
               max_accuracy_drop=cfg.max_accuracy_drop, ratio=result.ratio, probes=len(result.probes),
               val_accuracy=best.get("val_accuracy"), drop_points=best.get("drop_points"),
               nonzero_params=best.get("nonzero_params"), nonzero_macs=best.get("nonzero_macs"),
               interrupted=result.interrupted, message=result.message)
    ctx.progress.message(f"search: {result.message}")  # an interrupted row makes the runner save and stop
