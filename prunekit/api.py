"""The public one-call API: ``prunekit.prune`` dispatching to weight or structured pruning."""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional, Sequence

from torch import nn

from .errors import PruningError

GRANULARITIES = ("weight", "channel", "block", "input")


def prune(model: nn.Module, example_inputs, *, granularity: str = "weight", criterion="l1",
          ratio: Optional[float] = 0.5, scope: str = "global", threshold: Optional[float] = None,
          layer_ratios: Optional[Dict[str, float]] = None, include: Optional[Sequence[str]] = None,
          exclude: Optional[Sequence[str]] = None, include_types=None, ignore=None,
          macs_target: Optional[float] = None, round_to: Optional[int] = None,
          calibration: Optional[Iterable] = None, loss_fn: Optional[Callable] = None,
          inplace: bool = False, seed: int = 0, **options) -> nn.Module:
    """Prune ``model`` and return the pruned model (a copy unless ``inplace=True``).

    granularity:
      * ``"weight"``  — unstructured: mask individual weights (torch.nn.utils.prune convention);
        ``criterion`` l1 / l2 / random / taylor; ``scope`` global (one ranking) or local
        (same ratio per layer); ``ratio`` or ``threshold`` (keep score > t); ``layer_ratios``
        overrides; ``include`` / ``exclude`` name patterns; ``include_types`` layer types.
      * ``"channel"`` — structured: physically remove filters / channels / neurons / heads
        with every coupled layer kept consistent.
      * ``"block"``   — remove whole residual blocks with identity skips.
      * ``"input"``   — remove input features of the first Linear layer.
    ``calibration`` (iterable of ``(inputs, targets)``) and ``loss_fn`` feed data-driven
    criteria (taylor, activation statistics). Structured pruning also takes ``ignore``
    (names / patterns / types kept untouched), ``macs_target`` (fraction or count of MACs
    to keep instead of ``ratio``), ``round_to``, and via ``options``: ``layer_floor``,
    ``reduction`` / ``normalize`` (how a group's per-layer scores combine),
    ``leaf_modules`` (not traced into) and ``tracer`` ("auto" | "fx" | "export").
    """
    if granularity not in GRANULARITIES:
        raise PruningError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    if not isinstance(model, nn.Module):
        raise PruningError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if granularity == "weight":
        unsupported = {k: v for k, v in dict(ignore=ignore, macs_target=macs_target, round_to=round_to).items() if v}
        if unsupported:
            raise PruningError(f"{', '.join(unsupported)} apply to structured pruning only (granularity='channel'); "
                               "for weights use include/exclude and ratio/threshold")
        from .unstructured import prune_weights

        return prune_weights(model, example_inputs, criterion=criterion, ratio=ratio, threshold=threshold,
                             scope=scope, layer_ratios=layer_ratios, include=include, exclude=exclude,
                             include_types=include_types, calibration=calibration, loss_fn=loss_fn,
                             inplace=inplace, seed=seed, **options)
    if threshold is not None:
        raise PruningError("threshold applies to weight pruning; structured pruning takes ratio or macs_target")
    from .structured import prune_structured
    from .unstructured.select import resolve_types

    if include_types is not None:
        include_types = resolve_types(include_types)  # accept "Conv2d" as well as nn.Conv2d
    if ratio is None:
        if macs_target is None:
            raise PruningError("give ratio (fraction of channels to remove) or macs_target (fraction of MACs to keep)")
        ratio = 0.0  # unused: the MACs target decides how much goes
    return prune_structured(model, example_inputs, granularity=granularity, criterion=criterion, ratio=ratio,
                            scope=scope, layer_ratios=layer_ratios, ignore=ignore, exclude=exclude, include=include,
                            include_types=include_types, macs_target=macs_target, round_to=round_to,
                            calibration=calibration, loss_fn=loss_fn, inplace=inplace, seed=seed, **options)


def measure(model: nn.Module, example_inputs, **kwargs) -> dict:
    """Parameters, non-zeros, MACs (dense and non-zero), bytes on disk and measured latency (see prunekit.measure)."""
    from .measure import measure as _measure

    return _measure(model, example_inputs, **kwargs)
