"""The ``search:`` recipe stage: accuracy-budgeted bisection over the global ratio, or per-layer allocation."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Optional

from ..errors import ConfigError
from ..recipe.stages import ORDER_SEARCH, RunContext, register_stage
from ..train.feature_distill import FeatureDistillConfig
from ..train.loop import FitConfig
from ..schedule.common import PruneTargetConfig, check_prune_target
from .budget import budget_search
from .layerwise import layerwise_search


def _recovery() -> FitConfig:
    return FitConfig(epochs=1, lr=1e-3)


@dataclass
class SearchConfig(PruneTargetConfig):
    """Recipe ``search:``: the most pruning whose validation accuracy stays within ``max_accuracy_drop`` points."""

    method: Literal["bisection", "layerwise"] = "bisection"  # global ratio bisection, or per-layer ratios from sensitivity
    max_accuracy_drop: float = 1.0  # budget in validation-accuracy points (1.0 = one percentage point)
    objective: Literal["ratio", "macs", "latency"] = "ratio"  # bisection: largest ratio, or smallest MACs / latency
    lo: float = 0.0  # bisection: smallest ratio (assumed within budget)
    hi: float = 0.99  # bisection: largest ratio tried (first probe)
    tol: float = 0.01  # bisection: stop when the bracket is narrower
    max_probes: int = 10  # bisection: at most this many pruned + fine-tuned evaluations
    ratios: List[float] = field(default_factory=lambda: [0.25, 0.5, 0.7, 0.8, 0.9, 0.95])  # layerwise: ratios per layer
    finetune: FitConfig = field(default_factory=_recovery)  # short recovery fine-tune of every probe
    recovery: Literal["oneshot", "agp", "iterative"] = "oneshot"  # probe: prune then fine-tune / AGP during it / rounds
    rounds: int = 3  # recovery iterative: prune / fine-tune rounds per probe
    distill: Optional[FeatureDistillConfig] = None  # distil from the unpruned model during recovery
    measure_latency: bool = True  # time every probe at batch 1 (always on for objective latency)

    def validate(self):
        if self.max_accuracy_drop < 0:
            raise ConfigError(f"search.max_accuracy_drop must be >= 0 points, got {self.max_accuracy_drop}")
        if not 0.0 <= self.lo < self.hi < 1.0:
            raise ConfigError(f"search needs 0 <= lo < hi < 1, got lo={self.lo}, hi={self.hi}")


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
