"""Comparison rows for the reduce stage: train + score + measure a model with / without reduction, or input-pruned."""
from __future__ import annotations

import logging
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from ..data.base import DataSplits
from ..errors import PrunekitError
from ..progress import Progress
from ..train.loop import FitConfig, evaluate, fit
from .pipeline import ReducedModel
from .reducer import Reducer

log = logging.getLogger(__name__)

SIZE_KEYS = ("params", "nonzero_params", "macs", "nonzero_macs")


def sizes(model: nn.Module, example: torch.Tensor, *, latency: bool = True, batch_sizes=(1, 64)) -> dict:
    """params / non-zeros / MACs (+ latency at each batch size) of ``model`` on ``example`` inputs."""
    from ..api import measure

    m = measure(model, example, latency=latency, batch_sizes=tuple(b for b in batch_sizes if b != len(example)),
                repeats=20, warmup=3)
    keep = [k for k in m if k in SIZE_KEYS or (k.startswith("latency_ms") and "iqr" not in k)]
    out = {k: m[k] for k in keep}
    if latency and len(example) in batch_sizes:
        out[f"latency_ms_b{len(example)}"] = m["latency_ms"]
    return out


def accuracy(model: nn.Module, data: DataSplits, loss_fn: Optional[Callable] = None) -> float:
    return float(evaluate(model, data.x_test, data.y_test, num_classes=data.num_classes, loss_fn=loss_fn)["accuracy"])


def train_row(name: str, model: nn.Module, data: DataSplits, fit_cfg: FitConfig, *, loss_fn=None,
              progress: Optional[Progress] = None, latency: bool = True, end_to_end: Optional[nn.Module] = None,
              raw_example: Optional[torch.Tensor] = None) -> tuple[dict, nn.Module]:
    """Train ``model`` on ``data``; the row has test accuracy and sizes (and end-to-end sizes on raw inputs)."""
    result = fit(model, data, fit_cfg, loss_fn=loss_fn, progress=progress, stage=f"reduce:{name}")
    row = {"variant": name, "in_features": int(data.x_train[0].numel()), "epochs": len(result.history),
           "accuracy": accuracy(model, data, loss_fn), **sizes(model, data.x_test[:1], latency=latency)}
    if end_to_end is not None and raw_example is not None:
        row["end_to_end"] = sizes(end_to_end, raw_example, latency=latency)
    return row, model


def reduced_row(reducer: Reducer, model: nn.Module, data: DataSplits, fit_cfg: FitConfig, **kw) -> tuple[dict, nn.Module]:
    """Row of a model trained on ``reducer``'s output; ``end_to_end`` counts the reducer too (linear ones as MACs)."""
    name = f"{reducer.method}-{reducer.n_components_}"
    wrapped = ReducedModel(reducer, model)
    row, model = train_row(name, model, data, fit_cfg, end_to_end=wrapped, **kw)
    row.update(method=reducer.method, n_components=reducer.n_components_)
    return row, model


def input_pruning_row(trained_raw: nn.Module, raw: DataSplits, k: int, fit_cfg: FitConfig, *, loss_fn=None,
                      progress: Optional[Progress] = None, latency: bool = True) -> dict:
    """Learned feature selection: structured input-feature pruning of the first Linear down to ``k`` inputs, fine-tuned."""
    from ..api import prune

    d = int(raw.x_train[0].numel())
    name = f"input-prune-{k}"
    try:
        pruned = prune(trained_raw, raw.x_train[:8], granularity="input", ratio=1.0 - k / d)
    except PrunekitError as exc:  # e.g. the model has no Linear reading the inputs
        log.warning("reduce: input-feature pruning comparison unavailable: %s", exc)
        return {"variant": name, "error": f"{type(exc).__name__}: {exc}"}
    row, _ = train_row(name, pruned, raw, fit_cfg, loss_fn=loss_fn, progress=progress, latency=latency)
    row["in_features"] = k
    return row


def explained_variance_curve(raw, seed: int, max_components: int = 512) -> Optional[list]:
    """Cumulative explained-variance ratio of a PCA of the training inputs (for the report's curve)."""
    x = raw.x_train.reshape(len(raw.x_train), -1)
    k = int(min(x.shape[0], x.shape[1], max_components))
    if k < 1:
        return None
    pca = Reducer("pca", k, random_state=seed).fit(x)
    return np.round(np.cumsum(pca.estimator_.explained_variance_ratio_), 5).tolist()
