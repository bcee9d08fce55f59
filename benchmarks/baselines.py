"""What the Fashion-MNIST benchmarks share: test accuracy in batches, and dense baselines trained once and cached."""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

import torch

import prunekit
from prunekit.train import FitConfig, fit


@torch.inference_mode()
def accuracy(model, x: torch.Tensor, y: torch.Tensor, batch: int = 500) -> float:
    """Top-1 accuracy (a fraction) of ``model`` (a torch module, or any callable such as an OrtModule) on (x, y)."""
    if isinstance(model, torch.nn.Module):
        model.eval()
    hits = 0
    for i in range(0, len(x), batch):
        out = model(x[i:i + batch])
        hits += int((out.argmax(-1) == y[i:i + batch]).sum())
    return hits / len(x)


def cached_fit(name: str, model: torch.nn.Module, data, cfg: FitConfig, cache, key: Sequence, *,
               retrain: bool = False) -> torch.nn.Module:
    """``model`` trained by ``fit(model, data, cfg)``, or loaded from ``cache`` (a folder) when a file keyed by
    ``name``, ``key`` (everything else that shapes the model) and ``cfg`` is there."""
    digest = hashlib.sha256(json.dumps([*key, asdict(cfg)], sort_keys=True, default=str).encode()).hexdigest()[:12]
    cached = Path(cache) / f"{name}-{digest}.safetensors"
    if cached.exists() and not retrain:
        return prunekit.load(cached, model)
    fit(model, data, cfg, stage=f"train {name}")
    cached.parent.mkdir(parents=True, exist_ok=True)
    prunekit.save(model, cached)
    return model
