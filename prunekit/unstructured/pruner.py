"""Unstructured pruning: score weights, choose the lowest (global, per layer or per row, by ratio, threshold or an
N:M pattern), mask them; a reconstructing criterion (SparseGPT) also rewrites the kept weights, layer by layer."""
from __future__ import annotations

import logging
from typing import Callable, Iterable, List, Optional

import torch
from torch import nn

from ..errors import ConfigError, PruningError
from ..importance import Criterion, create_criterion
from ..importance.base import ACTIVATIONS, GRADIENTS, INPUTS, NeedsDataError
from ..modelutils import clone_model
from ..progress import Progress, ensure
from .layout import as_rows, transposed
from .masks import attach_refresh_hooks, current_mask, effective, set_mask, trainable
from .nm import check_divisible, input_axis, nm_mask, parse_pattern
from .select import Target, layer_ratio_overrides, named_patterns, select_params

log = logging.getLogger(__name__)


def weight_criterion(criterion, seed: int, calibration=None, loss_fn=None, *, check_data: bool = False) -> Criterion:
    """The criterion weight pruning scores with; ``check_data``: refuse a data-driven one without data."""
    crit = create_criterion(criterion, **({"seed": seed} if criterion == "random" else {}))
    if check_data and crit.needs_data and (calibration is None or (GRADIENTS in crit.needs and loss_fn is None)):
        raise NeedsDataError(_needs_data(crit))
    return crit


def _needs_data(crit: Criterion) -> str:
    if GRADIENTS not in crit.needs:
        return (f"criterion {crit.name!r} needs data (the inputs of every pruned layer): pass calibration=<a "
                "DataLoader or list of batches: (inputs, targets) pairs or the inputs alone; calibration_batches "
                "limits how many are read>, or choose a magnitude criterion (l1, l2)")
    return (f"criterion {crit.name!r} needs data: pass calibration=<iterable of (inputs, targets) batches> "
            "and loss_fn=<callable(outputs, targets)>, or choose a magnitude criterion (l1, l2)")


def prune_weights(model: nn.Module, example_inputs=None, part=None, *, calibration: Optional[Iterable] = None,
                  loss_fn: Optional[Callable] = None, inplace: bool = False, progress: Optional[Progress] = None,
                  **fields) -> nn.Module:
    """Mask the least important weights; returns the (copied unless ``inplace``) masked model.

    ``part`` is a PruneSpec's weight part (``prunekit.PruneSpec(granularity="weight", ...).part()``);
    without it, ``fields`` are PruneSpec fields (the defaults of ``prunekit.prune``).
    Pruned weights stay pruned: an already-masked weight scores ``-inf`` so it is always
    among the removed ones, and ``ratio`` with ``relative_to="remaining"`` removes that
    fraction of the weights still alive (torch.nn.utils.prune's semantics).
    Prunable weights: ``weight`` of the ``include_types`` layers (default Linear, Hugging Face's Conv1D, Conv*,
    ConvTranspose*) and nn.MultiheadAttention's ``in_proj_weight`` (its ``out_proj`` is a Linear); masks hold even where
    a parent module reads them functionally (see :func:`prunekit.unstructured.masks.attach_refresh_hooks`).

    ``scope``: ``"global"`` (one ranking over every selected weight), ``"local"`` (``ratio`` of every layer) or
    ``"row"`` (``ratio`` of every output row); unset, the criterion's ``default_scope`` (row for wanda).
    ``pattern="N:M"``: keep the N best of every M consecutive weights along each row's input dimension
    (:mod:`prunekit.unstructured.nm`). ``criterion="sparsegpt"`` reconstructs layer by layer
    (:mod:`prunekit.unstructured.sparsegpt`): the kept weights change too. ``blocks="auto"`` (or the list's
    name) calibrates wanda / sparsegpt block by block within ``max_memory`` (:mod:`prunekit.unstructured.sequential`).
    """
    from ..api import run_once
    from ..spec import PruneSpec

    if part is None:
        part = PruneSpec.from_fields(None, caller="prune_weights", **{"granularity": "weight", **fields}).part()
    elif fields:
        raise ConfigError(f"prune_weights got both a spec part and options {sorted(fields)}; put them in the spec")
    criterion, ratio, threshold, scope = part.criterion, part.ratio, part.threshold, part.scope
    relative_to, layer_ratios, seed = part.relative_to, part.layer_ratios, part.seed
    include, exclude, include_types = part.include, part.exclude, part.include_types
    calibration_batches = part.calibration_batches
    nm = parse_pattern(part.pattern)
    if threshold is not None:
        ratio = None
    chosen = select_params(model, include=include, exclude=exclude, include_types=include_types)  # fail before copying
    if nm is not None:
        for t in chosen:
            check_divisible(t.key, getattr(trainable(t.module, t.param), "shape", ()), input_axis(t.module), nm[1],
                            part.pattern)
    if not inplace:  # module objects given as patterns -> their names: the copy has modules of its own
        include, exclude, layer_ratios = named_patterns(model, include, exclude, layer_ratios)
        model = clone_model(model)
    targets = select_params(model, include=include, exclude=exclude, include_types=include_types)
    keys = [t.key for t in targets]
    overrides = layer_ratio_overrides(keys, layer_ratios, {t.key: t.module_name for t in targets}, model=model)
    if example_inputs is not None:
        run_once(model, example_inputs)

    with ensure(progress).task("weight pruning", total=1) as task:
        crit = weight_criterion(criterion, seed)
        if crit.reconstructs:
            if calibration is None:
                raise NeedsDataError(_needs_data(crit))
            from .sparsegpt import prune_sequential

            def removal(t, dead):
                r = overrides.get(t.key, ratio)
                alive = int((~dead).sum())
                return int(round(r * alive)) if relative_to == "remaining" else max(0, int(round(r * dead.numel())) - (dead.numel() - alive))

            if part.blocks is not None:  # block by block (prunekit.unstructured.sequential)
                from .sequential import prune_blocks

                prune_blocks(model, targets, crit, calibration, part, overrides=overrides, removal=removal, nm=nm)
            else:
                prune_sequential(model, targets, crit, calibration, calibration_batches, removal, nm)
            task.advance()
            return model
        if crit.needs_data and part.blocks is not None and part.block_inputs == "pruned":
            if calibration is None:
                raise NeedsDataError(_needs_data(crit))
            from .sequential import prune_blocks

            prune_blocks(model, targets, crit, calibration, part, overrides=overrides, nm=nm)
            task.advance()
            return model
        if crit.needs_data:
            _calibrate(model, targets, crit, calibration, loss_fn, calibration_batches, blocks=part.blocks,
                       max_memory=part.max_memory)

        scores = {t.key: layer_scores(crit, t) for t in targets}

        by_key = {t.key: t for t in targets}
        if nm is not None:
            new_masks = {n: nm_mask(s, nm[0], nm[1], input_axis(by_key[n].module)) for n, s in scores.items()}
        elif threshold is not None:
            new_masks = {n: ((s > threshold) & torch.isfinite(s)).float() for n, s in scores.items()}
        else:
            new_masks = {}
            rest = [n for n in keys if n not in overrides]
            for n, r in overrides.items():
                new_masks[n] = _layer_mask(scores[n], r, relative_to, scope, by_key[n])
            if rest and scope in ("local", "row"):
                for n in rest:
                    new_masks[n] = _layer_mask(scores[n], ratio, relative_to, scope, by_key[n])
            elif rest:
                group = [scores[n] for n in rest]
                k = sum(_dead(s) for s in group) + _new_count(group, ratio, relative_to)
                for n, m in zip(rest, _lowest_k_mask(group, k)):
                    new_masks[n] = m
        for n, mask in new_masks.items():
            if mask.sum() == 0:
                log.warning("layer %s would lose every weight; its single most important weight is kept", n)
                mask.view(-1)[torch.argmax(scores[n].view(-1))] = 1.0
            set_mask(by_key[n].module, by_key[n].param, mask)
        attach_refresh_hooks(model)
        task.advance()
    return model


def layer_scores(crit: Criterion, t: Target) -> torch.Tensor:
    """``crit``'s scores of target ``t``'s weights, weight-shaped; already pruned weights score ``-inf``.

    A criterion that reads layer inputs (Wanda) scores the weight as ``(out, in)``, the layout its input columns
    follow (:mod:`prunekit.importance.inputs`): a Hugging Face ``Conv1D``'s weight is handed over transposed and its
    scores transposed back (:mod:`.layout`). Any other criterion scores the stored tensor, like its gradients.
    """
    w = effective(t.module, t.param).detach()
    if INPUTS in crit.needs and transposed(t.module, t.param):
        s = crit.weight_scores(t.key, as_rows(t.module, t.param, w)).t()
    else:
        s = crit.weight_scores(t.key, w)
    s = s.float().clone()
    s[current_mask(t.module, t.param) == 0] = float("-inf")
    return s


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


def _layer_mask(scores: torch.Tensor, ratio: float, relative_to: str, scope: str,
                t: Optional[Target] = None) -> torch.Tensor:
    """``ratio`` of one layer (``scope="local"``) or of each of its output rows (``"row"``: dim 0, or dim 1 where
    target ``t`` stores its weight transposed, see :mod:`.layout`) removed."""
    if scope != "row" or scores.dim() < 2:
        return _lowest_k_mask([scores], _count(scores, ratio, relative_to))[0]
    if t is not None and transposed(t.module, t.param):
        return _layer_mask(scores.t(), ratio, relative_to, scope).t().contiguous()
    rows = scores.reshape(scores.shape[0], -1)
    dead = torch.isinf(rows).sum(1)
    alive = rows.shape[1] - dead
    if relative_to == "remaining":
        k = dead + torch.round(ratio * alive.double()).long()
    else:
        k = torch.maximum(dead, torch.full_like(dead, int(round(ratio * rows.shape[1]))))
    order = torch.sort(rows, dim=1, stable=True).indices
    rank = torch.empty_like(order)
    rank.scatter_(1, order, torch.arange(rows.shape[1]).expand_as(order).contiguous())
    return (rank >= k.unsqueeze(1)).float().reshape(scores.shape)


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


def _calibrate(model: nn.Module, targets, crit: Criterion, calibration, loss_fn, max_batches: int, *,
               blocks=None, max_memory=None) -> None:
    """Forward + backward on calibration batches so a data-driven criterion can observe the targets' gradients.

    ``targets``: :class:`Target` entries, or ``(module_name, module)`` pairs meaning their ``weight``. The loop is
    :func:`prunekit.importance.calibrate.calibrate` (eval mode, flags and ``.grad`` restored afterwards); with
    ``blocks``, :func:`prunekit.importance.sequential.calibrate_blocks` (block by block, within ``max_memory``).
    """
    from ..importance.calibrate import calibrate

    if calibration is None or (GRADIENTS in crit.needs and loss_fn is None):
        raise NeedsDataError(_needs_data(crit))
    if ACTIVATIONS in crit.needs:  # activation statistics are per channel: only channel pruning feeds them
        raise PruningError(f"criterion {crit.name!r} does not support unstructured (weight) pruning: it scores "
                           "channels from activation statistics (use granularity='channel')")
    targets = [t if isinstance(t, Target) else Target(f"{t[0]}.weight", t[0], t[1], "weight") for t in targets]
    if blocks is not None:
        from ..importance.sequential import calibrate_blocks

        calibrate_blocks(crit, model, calibration, blocks=blocks, max_memory=max_memory, max_batches=max_batches,
                         layers=[(t.key, t.module, t.param) for t in targets])
        return
    calibrate(crit, model, calibration, loss_fn=loss_fn, max_batches=max_batches,
              params=[(t.key, trainable(t.module, t.param)) for t in targets],
              layers=[(t.key, t.module, t.param) for t in targets] if INPUTS in crit.needs else None)
