"""Where a latency table is kept and under what it was measured: the conditions (backend, batch, input shapes,
threads), the cache key (with the model's structure, torch's version and this CPU) and the JSON file itself."""
from __future__ import annotations

import hashlib
import json
import logging
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

import torch

from .._inputs import Inputs, split_inputs, with_batch_size
from ..errors import ConfigError

log = logging.getLogger(__name__)

FORMAT = 2  # 2: fastest round, not the median. Cache file format: bump when the timing method or the file layout changes
BACKENDS = ("torch",)  # PyTorch eager, float32, CPU


@dataclass(frozen=True)
class Conditions:
    """What a latency is measured under; every field is part of the cache key."""

    backend: str  # "torch": PyTorch eager float32 on CPU
    batch: int  # leading dimension of the timed inputs
    input_shapes: Tuple[Tuple[int, ...], ...]  # every example input tensor's shape at that batch
    threads: int  # torch.get_num_threads() while timing

    def as_dict(self) -> Dict[str, Any]:
        return {"backend": self.backend, "batch": self.batch, "input_shapes": [list(s) for s in self.input_shapes],
                "threads": self.threads}


def conditions(example_inputs: Inputs, *, batch: Optional[int] = None, threads: Optional[int] = None,
               backend: str = "torch") -> Conditions:
    """The measurement conditions: by default the example inputs' shapes (batch included) and the current threads."""
    if backend not in BACKENDS:
        raise ConfigError(f"latency backend {backend!r} is not available; backends: {', '.join(BACKENDS)} "
                          "(PyTorch eager float32 on CPU)")
    inputs = with_batch_size(example_inputs, batch) if batch is not None else example_inputs
    args, kwargs = split_inputs(inputs)
    shapes = tuple(tuple(int(s) for s in t.shape) for t in list(args) + list(kwargs.values())
                   if isinstance(t, torch.Tensor))
    if not shapes:
        raise ConfigError("latency_target needs at least one example input tensor (its shape sets the batch)")
    return Conditions(backend, int(batch if batch is not None else (shapes[0][0] if shapes[0] else 1)), shapes,
                      int(threads if threads is not None else torch.get_num_threads()))


def cache_dir() -> Path:
    """``$PRUNEKIT_CACHE_DIR/latency``, else ``$XDG_CACHE_HOME/prunekit/latency``, else
    ``~/.cache/prunekit/latency``."""
    from ..sparse.native import cache_dir as prunekit_cache

    return prunekit_cache() / "latency"


def machine_tag() -> str:
    """The CPU's model and feature flags (two machines with the same tag run the same kernels alike)."""
    from ..sparse.native import _cpu_tag

    return _cpu_tag() or f"{platform.machine()} {platform.processor()}"


def cache_key(structure: str, cond: Conditions) -> str:
    """Digest of the model structure, the measurement conditions, torch's version and the machine."""
    text = json.dumps({"format": FORMAT, "structure": structure, **cond.as_dict(), "torch": torch.__version__,
                       "machine": machine_tag()}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:24]


def read_table(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return {}
    out = {k: data[k] for k in ("model_ms", "units") if k in data}
    curve = data.get("rest_curve")
    if (isinstance(curve, dict) and isinstance(curve.get("numel"), list) and isinstance(curve.get("ms"), list)
            and len(curve["numel"]) == len(curve["ms"]) > 0
            and all(isinstance(v, (int, float)) for v in curve["numel"] + curve["ms"])):
        out["rest_curve"] = curve  # else (an older file): timed again
    return out


def write_table(path: Path, cond: Conditions, data: Dict[str, Any]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": FORMAT, "conditions": cond.as_dict(), "torch": torch.__version__,
                                   "machine": machine_tag(), **data}, indent=1), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:  # a read-only cache costs a re-measurement next time, nothing else
        log.warning("latency table not cached (%s): %s", path, exc)
