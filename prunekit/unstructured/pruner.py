"""Unstructured pruning: score weights, choose the lowest (global or per-layer, by ratio or threshold), mask them."""
from __future__ import annotations

import logging
from typing import Callable, Dict, Iterable, List, Optional, Sequence

import torch
from torch import nn

from .._inputs import first_tensor, split_inputs
from ..errors import PruningError
from ..importance import Criterion, create_criterion
from ..modelutils import clone_model
from ..progress import Progress, ensure
from .masks import attach_refresh_hooks, current_mask, effective, set_mask, trainable
from .select import Target, check_ratio, layer_ratio_overrides, select_params

log = logging.getLogger(__name__)


def check_weight_args(*, ratio, threshold, scope: str, relative_to: str, layer_ratios) -> Optional[float]:
    """Validate weight pruning's numeric options; returns the checked ratio (None with a threshold)."""
    if scope not in ("global", "local"):
        raise PruningError(f"scope must be 'global' or 'local', got {scope!r}")
    if relative_to not in ("remaining", "total"):
        raise PruningError(f"relative_to must be 'remaining' or 'total', got {relative_to!r}")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or threshold < 0:
            raise PruningError(f"threshold must be a non-negative number (keep weights whose score > threshold), got {threshold!r}")
    elif ratio is None:
        raise PruningError("give either ratio (fraction of weights to remove) or threshold")
    else:
        ratio = check_ratio(ratio)
    if layer_ratios is not None and not isinstance(layer_ratios, dict):
        raise PruningError(f"layer_ratios must be a dict {{name pattern: ratio}}, got {type(layer_ratios).__name__}")
    for key, r in (layer_ratios or {}).items():
        check_ratio(r, f"layer_ratios[{key!r}]")
    return ratio


def weight_criterion(criterion, seed: int, calibration=None, loss_fn=None, *, check_data: bool = False) -> Criterion:
    """The criterion weight pruning scores with; ``check_data``: refuse a data-driven one without data."""
    crit = create_criterion(criterion, **({"seed": seed} if criterion == "random" else {}))
    if check_data and crit.needs_data and (calibration is None or loss_fn is None):
        raise PruningError(_needs_data(crit))
    return crit


def _needs_data(crit: Criterion) -> str:
    return (f"criterion {crit.name!r} needs data: pass calibration=<iterable of (inputs, targets) batches> "
            "and loss_fn=<callable(outputs, targets)>, or choose a magnitude criterion (l1, l2)")


def prune_weights(model: nn.Module, example_inputs=None, *, criterion="l1", ratio: Optional[float] = 0.5,
                  threshold: Optional[float] = None, scope: str = "global", relative_to: str = "remaining",
                  layer_ratios: Optional[Dict[str, float]] = None, include: Optional[Sequence[str]] = None,
                  exclude: Optional[Sequence[str]] = None, include_types=None,
                  calibration: Optional[Iterable] = None, loss_fn: Optional[Callable] = None,
                  calibration_batches: int = 8, inplace: bool = False, seed: int = 0,
                  progress: Optional[Progress] = None) -> nn.Module:
    """Mask the least important weights; returns the (copied unless ``inplace``) masked model.

    Pruned weights stay pruned: an already-masked weight scores ``-inf`` so it is always
    among the removed ones, and ``ratio`` with ``relative_to="remaining"`` removes that
    fraction of the weights still alive (torch.nn.utils.prune's semantics).
    Prunable weights: ``weight`` of the ``include_types`` layers (default Linear, Conv*, ConvTranspose*)
    and nn.MultiheadAttention's ``in_proj_weight`` (its ``out_proj`` is a Linear); masks hold even where
    a parent module reads them functionally (see :func:`prunekit.unstructured.masks.attach_refresh_hooks`).
    """
    from ..api import run_once

    ratio = check_weight_args(ratio=ratio, threshold=threshold, scope=scope, relative_to=relative_to,
                              layer_ratios=layer_ratios)
    select_params(model, include=include, exclude=exclude, include_types=include_types)  # fail before copying
    if not inplace:
        model = clone_model(model)
    targets = select_params(model, include=include, exclude=exclude, include_types=include_types)
    keys = [t.key for t in targets]
    overrides = layer_ratio_overrides(keys, layer_ratios, {t.key: t.module_name for t in targets})
    if example_inputs is not None:
        run_once(model, example_inputs)

    with ensure(progress).task("weight pruning", total=1) as task:
        crit = weight_criterion(criterion, seed)
        if crit.needs_data:
            _calibrate(model, targets, crit, calibration, loss_fn, calibration_batches)

        scores = {}
        for t in targets:
            s = crit.weight_scores(t.key, effective(t.module, t.param).detach()).float().clone()
            s[current_mask(t.module, t.param) == 0] = float("-inf")
            scores[t.key] = s

        if threshold is not None:
            new_masks = {n: ((s > threshold) & torch.isfinite(s)).float() for n, s in scores.items()}
        else:
            new_masks = {}
            rest = [n for n in keys if n not in overrides]
            for n, r in overrides.items():
                new_masks[n] = _lowest_k_mask([scores[n]], _count(scores[n], r, relative_to))[0]
            if rest and scope == "local":
                for n in rest:
                    new_masks[n] = _lowest_k_mask([scores[n]], _count(scores[n], ratio, relative_to))[0]
            elif rest:
                group = [scores[n] for n in rest]
                k = sum(_dead(s) for s in group) + _new_count(group, ratio, relative_to)
                for n, m in zip(rest, _lowest_k_mask(group, k)):
                    new_masks[n] = m
        by_key = {t.key: t for t in targets}
        for n, mask in new_masks.items():
            if mask.sum() == 0:
                log.warning("layer %s would lose every weight; its single most important weight is kept", n)
                mask.view(-1)[torch.argmax(scores[n].view(-1))] = 1.0
            set_mask(by_key[n].module, by_key[n].param, mask)
        attach_refresh_hooks(model)
        task.advance()
    return model


def _dead(scores: torch.Tensor) -> int:
    return int(torch.isinf(scores).sum())


def _new_count(group: List[torch.Tensor], ratio: float, relative_to: str) -> int:
    total = sum(s.numel() for s in group)
    dead = sum(_dead(s) for s in group)
    if relative_to == "remaining":
        return int(round(ratio * (total - dead)))
    return max(0, int(round(ratio * total)) - dead)


def _count(scores: torch.Tensor, ratio: float, relative_to: str) -> int:
    return _dead(scores) + _new_count([scores], ratio, relative_to)


def _lowest_k_mask(group: List[torch.Tensor], k: int) -> List[torch.Tensor]:
    """Masks zeroing the ``k`` lowest scores over the concatenation of ``group`` (ties: first index first)."""
    flat = torch.cat([s.reshape(-1) for s in group])
    keep = torch.ones_like(flat)
    if k > 0:
        order = torch.sort(flat, stable=True).indices
        keep[order[:k]] = 0.0
    out, start = [], 0
    for s in group:
        out.append(keep[start:start + s.numel()].view_as(s).clone())
        start += s.numel()
    return out


def _calibrate(model: nn.Module, targets, crit: Criterion, calibration, loss_fn, max_batches: int) -> None:
    """Run forward + backward on calibration batches so a data-driven criterion can observe gradients.

    ``targets``: :class:`Target` entries, or ``(module_name, module)`` pairs meaning their ``weight``.
    """
    if calibration is None or loss_fn is None:
        raise PruningError(_needs_data(crit))
    was = model.training
    model.eval()
    crit.reset()
    targets = [t if isinstance(t, Target) else Target(f"{t[0]}.weight", t[0], t[1], "weight") for t in targets]
    params = [(t.key, trainable(t.module, t.param)) for t in targets]
    seen = 0
    for batch in calibration:
        if seen >= max_batches:
            break
        inputs, targets = batch[0], batch[1]
        model.zero_grad(set_to_none=True)
        args, kwargs = split_inputs(inputs)
        loss = loss_fn(first_tensor(model(*args, **kwargs)), targets)
        loss.backward()
        crit.observe(params)
        seen += 1
    model.zero_grad(set_to_none=True)
    model.train(was)
    if seen == 0:
        raise PruningError("the calibration iterable yielded no batches")
