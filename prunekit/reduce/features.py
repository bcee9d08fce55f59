"""Penultimate-layer features of a classifier and their 2-D embeddings (PCA, t-SNE) for the report's pictures."""
from __future__ import annotations

from typing import Dict, Sequence

import numpy as np
import torch
from torch import nn

from ..errors import ReducerError
from .reducer import Reducer


def penultimate_features(model: nn.Module, x: torch.Tensor, batch_size: int = 256) -> torch.Tensor:
    """The input of the last ``nn.Linear`` the forward pass calls (the features the classifier head sees)."""
    seen = []

    def hook(module, args):
        seen.append(args[0].detach().reshape(len(args[0]), -1))

    handles = [m.register_forward_pre_hook(hook) for m in model.modules() if isinstance(m, nn.Linear)]
    if not handles:
        raise ReducerError(f"{type(model).__name__} has no nn.Linear layer, so it has no penultimate features to show")
    was = model.training
    model.eval()
    chunks = []
    try:
        with torch.no_grad():
            for i in range(0, len(x), batch_size):
                seen.clear()
                model(x[i:i + batch_size])
                chunks.append(seen[-1])
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return torch.cat(chunks)


def embed_2d(features: torch.Tensor, methods: Sequence[str] = ("pca", "tsne"), seed: int = 0) -> Dict[str, list]:
    """``{method: [[x, y], ...]}`` 2-D embeddings of ``features`` (rounded, JSON-friendly)."""
    out = {}
    for method in methods:
        kwargs = {}
        if method == "tsne":
            kwargs["perplexity"] = float(min(30, max(2, (len(features) - 1) // 3)))
        n = min(2, features.shape[1])
        z = Reducer(method, n, random_state=seed, **kwargs).fit_transform(features).numpy()
        if z.shape[1] == 1:
            z = np.concatenate([z, np.zeros_like(z)], axis=1)
        out[method] = np.round(z, 4).tolist()
    return out


def feature_pictures(models: Dict[str, nn.Module], x: torch.Tensor, y: torch.Tensor, *, max_points: int = 500,
                     methods: Sequence[str] = ("pca", "tsne"), seed: int = 0) -> dict:
    """Penultimate features of each named model on (a seeded subset of) ``x`` embedded in 2-D, with the labels."""
    gen = torch.Generator().manual_seed(seed)
    idx = torch.randperm(len(x), generator=gen)[:max_points]
    out = {"labels": y[idx].tolist(), "models": {}}
    for name, model in models.items():
        if model is None:
            continue
        out["models"][name] = embed_2d(penultimate_features(model, x[idx]), methods, seed)
    return out
