"""Sensitivity analysis: prune each layer alone at several ratios and record the validation metric."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from torch import nn

from ..errors import ConfigError
from ..progress import Progress, ensure
from ..schedule.common import check_metrics, clone
from ..schedule.recovery import Recovery, check_recovery
from .allocate import importance_ranking
from . import shard
from .bisect import accuracy_drop_points

log = logging.getLogger(__name__)

@dataclass
class SensitivityResult:
    """Per layer: validation accuracy at each ratio when only that layer is pruned."""

    baseline_accuracy: float
    ratios: List[float]
    accuracy: Dict[str, Dict[float, float]] = field(default_factory=dict)  # layer -> ratio -> accuracy
    sizes: Dict[str, int] = field(default_factory=dict)  # layer -> prunable parameters
    interrupted: bool = False  # Ctrl-C: the curves hold the layers finished so far

    @property
    def drops(self) -> Dict[str, Dict[float, float]]:
        """layer -> ratio -> accuracy drop in points."""
        return {layer: {r: accuracy_drop_points(self.baseline_accuracy, a) for r, a in c.items()}
                for layer, c in self.accuracy.items()}

    def ranking(self) -> list:
        """Layers from most to least sensitive (mean drop over the ratios)."""
        return importance_ranking(self.drops)

    def summary(self) -> dict:
        return {"baseline_accuracy": self.baseline_accuracy, "ratios": self.ratios,
                "curves": {layer: [{"ratio": r, "accuracy": a, "drop_points": accuracy_drop_points(self.baseline_accuracy, a)}
                                   for r, a in sorted(c.items())] for layer, c in self.accuracy.items()},
                "sizes": self.sizes, "ranking": self.ranking() if self.accuracy else [], "interrupted": self.interrupted}


def prunable_layers(model: nn.Module, include: Optional[Sequence[str]] = None,
                    exclude: Optional[Sequence[str]] = None) -> Dict[str, int]:
    """Layers weight pruning would touch, with their weight counts (model order)."""
    from ..unstructured import effective, select_layers

    return {name: effective(m).numel() for name, m in select_layers(model, include=include, exclude=exclude)}


def sensitivity(model: nn.Module, recovery: Recovery, *, ratios: Sequence[float] = (0.25, 0.5, 0.75, 0.9),
                layers: Optional[Sequence[str]] = None, exclude: Optional[Sequence[str]] = None,
                sizes: Optional[Dict[str, int]] = None, progress: Optional[Progress] = None) -> SensitivityResult:
    """Prune each layer alone at each ratio (``recovery.prune_layers(copy, {layer: ratio})``, no fine-tuning)
    and score it with ``recovery.evaluate``.

    ``layers`` default to every layer weight pruning would select (minus ``exclude``). Returns the
    accuracy curves, the layer sizes and (``.ranking()``) a layer-importance ranking. Ctrl-C keeps the
    layers done. Under torchrun the (layer, ratio) probes are shared out over the ranks and every rank gets
    the whole result, equal to one process's (:mod:`prunekit.search.shard`: each probe seeded, run alone).
    """
    check_recovery(recovery, "sensitivity")
    if recovery.prune_layers is None:
        raise ConfigError("sensitivity prunes one layer at a time and needs recovery.prune_layers; "
                          "Recovery.default builds it, or pass recovery.with_(prune_layers=fn)")
    if not ratios or any(not 0.0 < r < 1.0 for r in ratios):
        raise ConfigError(f"sensitivity ratios must lie strictly between 0 and 1, got {list(ratios)}")
    names = list(layers) if layers is not None else list(prunable_layers(model, exclude=exclude))
    if sizes is None:
        sizes = prunable_layers(model)
    result = SensitivityResult(baseline_accuracy=float(check_metrics(recovery.evaluate(model))["accuracy"]),
                               ratios=sorted(map(float, ratios)), sizes={n: int(sizes.get(n, 0)) for n in names})
    unique = sorted(set(result.ratios))
    pairs = [(name, r) for name in names for r in unique]
    done: Dict[str, Dict[float, float]] = {}

    def probe(pair) -> float:
        name, r = pair
        return float(check_metrics(recovery.evaluate(recovery.prune_layers(clone(model), {name: r})))["accuracy"])

    with ensure(progress).task("sensitivity", total=len(pairs)) as task:
        def record(i: int, acc: float) -> None:
            name, r = pairs[i]
            done.setdefault(name, {})[r] = acc
            task.advance()
            task.note(layer=name, ratio=r, val_acc=acc)

        base = shard.sweep_seed()
        try:  # under torchrun the (layer, ratio) pairs are dealt out over the ranks; results gathered on every rank
            shard.map_sharded(probe, pairs, seeds=[shard.probe_seed(base, i) for i in range(len(pairs))],
                              on_result=record, chunk=shard.rounds_of(len(pairs)))
        except KeyboardInterrupt:
            result.interrupted = True
            log.warning("sensitivity analysis interrupted after %d layers",
                        sum(len(c) == len(unique) for c in done.values()))
    result.accuracy = {name: done[name] for name in names if len(done.get(name, {})) == len(unique)}
    return result
