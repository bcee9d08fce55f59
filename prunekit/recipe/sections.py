"""Runner-owned recipe sections: model, output, measure, report (stages register their own sections)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from ..errors import ConfigError


@dataclass
class ModelConfig:
    """Which network: a registered name (``prunekit inspect`` lists them) or ``package.module:factory``."""

    name: str = "digits_cnn"
    kwargs: Dict[str, Any] = field(default_factory=dict)  # constructor arguments; num_classes / in_channels /
    # in_features are filled from the data when the factory accepts them and they are not given
    checkpoint: Optional[str] = None  # trained weights to start from (safetensors or weights-only .pt)


@dataclass
class MeasureConfig:
    """Before/after measurement."""

    latency: bool = True  # time forward passes (median after warm-up)
    batch_sizes: List[int] = field(default_factory=lambda: [1, 64])  # latency at each batch size
    repeats: int = 30  # timed runs per batch size
    warmup: int = 5  # untimed runs first
    threads: Optional[int] = None  # intra-op threads while timing (None: torch's current setting)

    def validate(self):
        if self.repeats < 1 or any(b < 1 for b in self.batch_sizes):
            raise ConfigError("measure.repeats and measure.batch_sizes must be >= 1")


@dataclass
class ReportConfig:
    html: bool = True  # write report.html next to results.json
    sparse_checkpoint: bool = True  # also write model.sparse.safetensors (bitmap sparse storage)


RUNNER_SECTIONS = {"model": ModelConfig, "measure": MeasureConfig, "report": ReportConfig}
SCALAR_KEYS = {"seed": int, "output": str, "name": str, "description": str, "device": str, "plugins": list, "threads": int}
