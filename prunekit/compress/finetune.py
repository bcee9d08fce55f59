"""Fine-tuning the centroids of a weight-shared model (Deep Compression, Han et al. 2016, section 3.2).

The gradient of a centroid is the sum of the gradients of the weights that share it. Training
runs through :func:`prunekit.train.fit`; a gradient hook on each shared parameter replaces every
kept weight's gradient by its cluster's pooled gradient and zeroes the pruned ones. Every weight
of a cluster then receives the same update from the (element-wise) optimizer, so the cluster stays
one value: the fine-tune moves the centroids, never the assignment. Masks hold. Afterwards every
cluster is snapped to one value (its first member's) so the model is exactly weight-shared again.
"""
from __future__ import annotations

from typing import Dict, Optional, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from ..progress import Progress
from ..unstructured.masks import is_masked
from .sharing import SHARED_ATTR, SharedLayer, cluster, kept_positions


def shared_layers(model: nn.Module) -> Dict[str, SharedLayer]:
    """The :class:`SharedLayer` of every weight :func:`share_weights` shared on ``model`` (recomputed, exact)."""
    widths = getattr(model, SHARED_ATTR, None)
    if not widths:
        raise ConfigError("the model is not weight-shared: call prunekit.compress.share_weights(model, bits=...) first")
    modules = dict(model.named_modules())
    out = {}
    for key, bits in widths.items():
        module = modules.get(key.rpartition(".")[0])
        if module is None:
            continue
        out[key] = cluster(key, _param(module).detach(), kept_positions(module), bits)
    return out


def finetune_centroids(model: nn.Module, data, cfg=None, *, layers: Optional[Dict[str, SharedLayer]] = None,
                       centroids_only: bool = False, progress: Optional[Progress] = None,
                       **fit_options) -> Tuple[nn.Module, Dict[str, SharedLayer], object]:
    """``(model, layers, fit_result)``: ``model`` (changed in place) after a fine-tune of its centroids.

    ``data`` is a :class:`prunekit.data.DataSplits` (train and val splits), ``cfg`` a
    :class:`prunekit.train.FitConfig` (default: one epoch of Adam at lr 1e-4). ``layers`` (from
    :func:`share_weights`; default: recomputed from the model) fixes the assignment.
    ``centroids_only=True`` freezes every other parameter (biases, norms) as the paper does;
    by default they train too. Extra keywords go to :func:`prunekit.train.fit`.
    """
    from ..train import FitConfig, fit

    layers = shared_layers(model) if layers is None else layers
    cfg = cfg or FitConfig(epochs=1, lr=1e-4, scheduler="none")
    modules = dict(model.named_modules())
    handles, shared_params = [], set()
    for key, layer in layers.items():
        module = modules[key.rpartition(".")[0]]
        param = _param(module)
        shared_params.add(id(param))
        handles.append(param.register_hook(_pool(layer, param)))
    frozen = []
    if centroids_only:
        for p in model.parameters():
            if id(p) not in shared_params and p.requires_grad:
                p.requires_grad_(False)
                frozen.append(p)
    try:
        result = fit(model, data, cfg, progress=progress, stage="finetune_centroids", **fit_options)
    finally:
        for h in handles:
            h.remove()
        for p in frozen:
            p.requires_grad_(True)
    new = {}
    for key, layer in layers.items():
        module = modules[key.rpartition(".")[0]]
        new[key] = _snap(module, layer)
    return model, new, result


def _param(module: nn.Module) -> nn.Parameter:
    return module.weight_orig if is_masked(module) else module.weight


def _pool(layer: SharedLayer, param: torch.Tensor):
    kept = layer.kept.reshape(-1).to(param.device)
    idx = layer.indices.to(param.device)
    k = layer.codebook.numel()

    def hook(grad: torch.Tensor) -> torch.Tensor:
        flat = grad.reshape(-1)
        sums = torch.zeros(k, dtype=grad.dtype, device=grad.device).index_add_(0, idx, flat[kept])
        out = torch.zeros_like(flat)
        out[kept] = sums[idx]
        return out.reshape(grad.shape)

    return hook


def _snap(module: nn.Module, layer: SharedLayer) -> SharedLayer:
    """Every cluster set to its first member's value; the layer's new codebook."""
    param = _param(module)
    flat = param.detach().reshape(-1).cpu()
    kept = layer.kept.reshape(-1)
    values = flat[kept]
    k = layer.codebook.numel()
    codebook = layer.codebook.clone()
    if values.numel():
        first = torch.full((k,), values.numel(), dtype=torch.int64)
        first.scatter_reduce_(0, layer.indices, torch.arange(values.numel()), reduce="amin")
        present = first < values.numel()
        codebook[present] = values[first[present]].to(codebook.dtype)
        codebook[codebook == 0] = 0.0
    new = SharedLayer(name=layer.name, bits=layer.bits, codebook=codebook, indices=layer.indices, kept=layer.kept)
    with torch.no_grad():
        param.copy_(new.values.to(param.device, param.dtype))
        if is_masked(module):
            module.weight = module.weight_orig * module.weight_mask
    return new
