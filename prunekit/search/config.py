"""``SearchConfig``: the typed request for an accuracy-budgeted search (recipe ``search:``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import List, Literal, Optional

from ..errors import ConfigError
from ..train.feature_distill import FeatureDistillConfig
from ..train.loop import FitConfig
from ..schedule.common import PruneTargetConfig


def _recovery() -> FitConfig:
    return FitConfig(epochs=1, lr=1e-3)


@dataclass
class SearchConfig(PruneTargetConfig):
    """Recipe ``search:``: the most pruning whose validation accuracy stays within ``max_accuracy_drop`` points."""

    method: Literal["bisection", "layerwise"] = "bisection"  # global ratio bisection, or per-layer ratios from sensitivity
    max_accuracy_drop: float = 1.0  # budget in validation-accuracy points (1.0 = one percentage point)
    objective: Literal["ratio", "macs", "latency"] = "ratio"  # bisection: largest ratio / smallest MACs / largest latency cut
    lo: float = 0.0  # bisection: smallest ratio (assumed within budget)
    hi: float = 0.99  # bisection: largest ratio tried (first probe)
    tol: float = 0.01  # bisection: stop when the bracket is narrower
    max_probes: int = 10  # bisection: at most this many pruned + fine-tuned evaluations
    ratios: List[float] = field(default_factory=lambda: [0.25, 0.5, 0.7, 0.8, 0.9, 0.95])  # layerwise: ratios per layer
    finetune: FitConfig = field(default_factory=_recovery)  # short recovery fine-tune of every probe
    recovery: Literal["oneshot", "agp", "iterative"] = "oneshot"  # probe: prune then fine-tune / AGP during it / rounds
    rounds: int = 3  # recovery iterative: prune / fine-tune rounds per probe
    distill: Optional[FeatureDistillConfig] = None  # distil from the unpruned model during recovery
    measure_latency: bool = True  # time every probe at batch 1 (objective latency: the latency table predicts instead)

    def validate(self):
        if self.max_accuracy_drop < 0:
            raise ConfigError(f"search.max_accuracy_drop must be >= 0 points, got {self.max_accuracy_drop}")
        if not 0.0 <= self.lo < self.hi < 1.0:
            raise ConfigError(f"search needs 0 <= lo < hi < 1, got lo={self.lo}, hi={self.hi}")
