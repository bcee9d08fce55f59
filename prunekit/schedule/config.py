"""``ScheduleConfig``: the typed request for a pruning schedule (recipe ``schedule:``), validated on construction."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..errors import ConfigError
from ..train.feature_distill import FeatureDistillConfig
from ..train.loop import FitConfig
from . import SCHEDULES
from .paths import SPARSITY_PATHS, check_fraction
from .common import PruneTargetConfig
from .gradual import AGPConfig


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
