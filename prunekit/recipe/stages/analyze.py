"""The ``analyze:`` recipe stage: per-layer sensitivity, weight histograms and Pareto sweep into results["analysis"]."""
from __future__ import annotations

from ...search.analyze import AnalyzeConfig, analyze
from . import ORDER_ANALYZE, RunContext, register_stage


@register_stage("analyze", config=AnalyzeConfig, order=ORDER_ANALYZE,
                help="per-layer sensitivity curves, weight histograms, layer ranking and accuracy-vs-size Pareto")
def run_analyze(ctx: RunContext, cfg: AnalyzeConfig) -> None:
    out = analyze(ctx.model, ctx.data, cfg, example_inputs=ctx.example_inputs, loss_fn=ctx.loss_fn, progress=ctx.progress)
    ctx.results["analysis"] = out
    ranking = out["sensitivity"]["ranking"]
    ctx.record("analyze", layers=len(ranking), ratios=len(cfg.ratios),
               most_sensitive=ranking[0]["layer"] if ranking else None,
               least_sensitive=ranking[-1]["layer"] if ranking else None,
               pareto_points=len(out["pareto"]["points"]), interrupted=out["sensitivity"]["interrupted"])
