"""Layer analysis for ``prunekit analyze``: sensitivity curves, weight histograms, importance ranking, accuracy-vs-size Pareto."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional, Sequence

import numpy as np
from torch import nn

from ..errors import ConfigError
from ..progress import Progress, ensure
from ..train.loop import FitConfig
from ..schedule.common import check_metrics, clone
from ..schedule.recovery import Recovery, check_recovery, run_finetune
from . import shard
from .allocate import pareto_front
from .sensitivity import sensitivity

log = logging.getLogger(__name__)


def weight_histograms(model: nn.Module, *, bins: int = 40, include: Optional[Sequence[str]] = None) -> Dict[str, dict]:
    """Per prunable layer: histogram of its (effective) weights, plus mean |w|, std and zero fraction."""
    from ..unstructured import effective, select_layers

    out = {}
    for name, module in select_layers(model, include=include):
        w = effective(module).detach().float().cpu().numpy().ravel()
        counts, edges = np.histogram(w, bins=bins)
        out[name] = {"counts": counts.tolist(), "edges": edges.tolist(), "numel": int(w.size),
                     "mean_abs": float(np.abs(w).mean()), "std": float(w.std()), "zero_fraction": float((w == 0).mean())}
    return out


def pareto_sweep(model: nn.Module, recovery: Recovery, *, ratios: Sequence[float],
                 progress: Optional[Progress] = None) -> dict:
    """Accuracy and size at each global ratio (``recovery.prune(copy, total=r, step=r)``, then
    ``recovery.finetune``), plus the unpruned model, and the non-dominated front. Under torchrun the ratios
    are shared out over the ranks (:mod:`prunekit.search.shard`); every rank gets every point."""
    check_recovery(recovery, "pareto_sweep")
    unpruned = {"ratio": 0.0, "accuracy": float(check_metrics(recovery.evaluate(model))["accuracy"]),
                **recovery.measure(model)}
    points = [shard.broadcast_json(unpruned)]  # rank 0's numbers on every rank (timings differ between processes)

    def point(r: float) -> dict:
        pruned = recovery.prune(clone(model), total=float(r), step=float(r))
        if run_finetune(recovery, pruned)[1]:
            raise KeyboardInterrupt
        return {"ratio": float(r), "accuracy": float(check_metrics(recovery.evaluate(pruned))["accuracy"]),
                **recovery.measure(pruned)}

    with ensure(progress).task("pareto sweep", total=len(ratios)) as task:
        def record(i: int, p: dict) -> None:
            points.append(p)
            task.advance()

        base = shard.sweep_seed()
        try:  # under torchrun the ratios are dealt out over the ranks; points gathered on every rank
            shard.map_sharded(point, [float(r) for r in ratios],
                              seeds=[shard.probe_seed(base, i) for i in range(len(ratios))], on_result=record,
                              chunk=shard.rounds_of(len(ratios)))
        except KeyboardInterrupt:
            log.warning("pareto sweep interrupted after %d ratios", len(points) - 1)
    size_key = "nonzero_params"
    return {"size_key": size_key, "points": points, "front": pareto_front(points, size_key=size_key)}


@dataclass
class AnalyzeConfig:
    """Recipe ``analyze:`` (and ``prunekit analyze``): how each layer reacts to pruning."""

    ratios: List[float] = field(default_factory=lambda: [0.25, 0.5, 0.75, 0.9])  # per-layer pruning ratios tried
    granularity: Literal["weight", "channel"] = "weight"
    criterion: str = "l1"  # registered importance criterion
    layers: Optional[List[str]] = None  # layers to analyse (default: every prunable layer)
    exclude: List[str] = field(default_factory=list)  # layers to skip
    pareto_ratios: List[float] = field(default_factory=lambda: [0.3, 0.5, 0.7, 0.8, 0.9, 0.95])  # global ratios swept
    finetune: Optional[FitConfig] = None  # fine-tune each Pareto point (slower; null: no)
    bins: int = 40  # weight-histogram bins

    def validate(self):
        for r in list(self.ratios) + list(self.pareto_ratios):
            if not 0.0 < float(r) < 1.0:
                raise ConfigError(f"analyze ratios must lie strictly between 0 and 1, got {r}")
        if self.bins < 2:
            raise ConfigError(f"analyze.bins must be >= 2, got {self.bins}")


def analyze(model: nn.Module, data, cfg: AnalyzeConfig, *, example_inputs: Any, loss_fn=None,
            progress: Optional[Progress] = None) -> dict:
    """Everything the analysis section shows, as a JSON-able dict (``results["analysis"]``)."""
    recovery = Recovery.default(data, example_inputs, granularity=cfg.granularity, criterion=cfg.criterion,
                                prune_kwargs={"exclude": cfg.exclude or None}, finetune=cfg.finetune, loss_fn=loss_fn,
                                progress=progress, stage="analyze")
    sens = sensitivity(model, recovery, ratios=cfg.ratios, layers=cfg.layers, exclude=cfg.exclude or None,
                       progress=progress)
    pareto = pareto_sweep(model, recovery, ratios=cfg.pareto_ratios, progress=progress)
    return {"granularity": cfg.granularity, "criterion": cfg.criterion, "sensitivity": sens.summary(),
            "histograms": weight_histograms(model, bins=cfg.bins, include=cfg.layers),
            "pareto": {**pareto, "fine_tuned": cfg.finetune is not None}}
