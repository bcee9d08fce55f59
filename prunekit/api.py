"""The public one-call API: ``prunekit.prune`` dispatching to weight or structured pruning.

Every request is checked before anything is copied, traced or pruned (:func:`check_prune_request`):
option names (a typo is a :class:`ConfigError`, never silently ignored), options the chosen
granularity does not use (:data:`PRUNE_OPTIONS`), values, and name patterns against the model's
module names (a pattern that matches nothing is a :class:`PruningError`).
"""
from __future__ import annotations

import difflib
from typing import Any, Callable, Dict, Iterable, Mapping, Optional, Sequence, Tuple

import torch
from torch import nn

from .errors import ConfigError, InputError, PrunekitError, PruningError

GRANULARITIES = ("weight", "channel", "block", "input")

# accepted by every granularity: data feeds (criteria that need no data ignore them) and plumbing
_EVERYWHERE: Tuple[str, ...] = ("criterion", "ratio", "calibration", "loss_fn", "inplace", "seed", "progress")

PRUNE_OPTIONS: Dict[str, Tuple[str, ...]] = {
    "weight": _EVERYWHERE + ("threshold", "scope", "relative_to", "layer_ratios", "include", "exclude",
                             "include_types", "calibration_batches"),
    "channel": _EVERYWHERE + ("scope", "layer_ratios", "include", "exclude", "include_types", "ignore",
                              "macs_target", "round_to", "layer_floor", "reduction", "normalize", "leaf_modules",
                              "tracer"),
    "block": _EVERYWHERE + ("include", "exclude", "ignore", "leaf_modules", "tracer"),
    "input": _EVERYWHERE + ("leaf_modules", "tracer"),
}
"""The options (keyword arguments besides ``granularity``) each granularity of :func:`prune` uses."""

ALL_OPTIONS: Tuple[str, ...] = tuple(dict.fromkeys(o for opts in PRUNE_OPTIONS.values() for o in opts))

PRUNE_DEFAULTS: Dict[str, Any] = dict(
    criterion="l1", ratio=0.5, scope="global", threshold=None, layer_ratios=None, include=None, exclude=None,
    include_types=None, ignore=None, macs_target=None, round_to=None, calibration=None, loss_fn=None, inplace=False,
    seed=0, progress=None, relative_to="remaining", calibration_batches=8, layer_floor=0.1, reduction="mean",
    normalize="mean", leaf_modules=(), tracer="auto",
)
"""What :func:`prune` uses for an option that is not given; an unused option left at this value is fine."""

_WHAT = {
    "weight": "granularity='weight' masks individual weights",
    "channel": "granularity='channel' removes whole channels",
    "block": "granularity='block' replaces the lowest-ranked identity-skip residual blocks by nn.Identity",
    "input": "granularity='input' removes input columns of the first Linear layer (the one reading the model input)",
}


def _is_set(value: Any, default: Any) -> bool:
    """An option counts as given when it is not None, not empty, and not its default value."""
    if value is None:
        return False
    if isinstance(value, (list, tuple, dict, set)) and len(value) == 0:
        return False
    try:
        return not bool(value == default)
    except Exception:  # e.g. a tensor compared with a scalar: it was given on purpose
        return True


def _unused_message(name: str, value: Any, granularity: str) -> str:
    users = [g for g, opts in PRUNE_OPTIONS.items() if name in opts]
    if name == "threshold":
        return ("threshold applies to weight pruning (granularity='weight'); structured pruning takes ratio "
                "or macs_target")
    if granularity == "weight":
        return (f"{name}={value!r} applies to structured pruning only (granularity={' / '.join(map(repr, users))}); "
                "for weights use include/exclude and ratio/threshold")
    return f"{name}={value!r} is not used by granularity={granularity!r} (only by {' / '.join(map(repr, users))})"


def check_options(granularity: str, options: Mapping[str, Any], defaults: Mapping[str, Any] = PRUNE_DEFAULTS,
                  caller: str = "prunekit.prune") -> None:
    """Refuse unknown option names and options ``granularity`` does not use (left at their default is fine).

    Raises :class:`ConfigError` naming each offending option and listing the allowed ones.
    """
    allowed = PRUNE_OPTIONS[granularity]
    unknown = [k for k in options if k not in ALL_OPTIONS and k != "granularity"]
    if unknown:
        parts = []
        for k in unknown:
            close = difflib.get_close_matches(k, ALL_OPTIONS, n=1, cutoff=0.6)
            parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
        raise ConfigError(
            f"{caller} got unknown option{'s' if len(unknown) > 1 else ''} {', '.join(parts)}; "
            f"options for granularity={granularity!r}: granularity, {', '.join(sorted(allowed))}"
        )
    unused = [k for k, v in options.items()
              if k in ALL_OPTIONS and k not in allowed and _is_set(v, defaults.get(k, PRUNE_DEFAULTS.get(k)))]
    if unused:
        lines = "; ".join(_unused_message(k, options[k], granularity) for k in unused)
        raise ConfigError(
            f"{lines}. {_WHAT[granularity]}; it takes: {', '.join(sorted(allowed))}. Remove the option "
            "or choose the granularity it belongs to"
        )


def run_once(model: nn.Module, example_inputs) -> Any:
    """Run ``model`` once on ``example_inputs`` (eval mode, no gradients, training flags restored).

    Any failure becomes an :class:`InputError` naming the example inputs' shapes / dtypes and the error,
    so a wrong example input is reported as such, not as a tracing or pruning failure.
    """
    from ._inputs import describe, split_inputs

    args, kwargs = split_inputs(example_inputs)  # InputError for a container that is no Tensor / tuple / dict
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        with torch.no_grad():
            return model(*args, **kwargs)
    except PrunekitError:
        raise
    except Exception as exc:
        text = " ".join(str(exc).split())
        text = text[:400] + ("..." if len(text) > 400 else "")
        raise InputError(
            f"the model could not run on the example inputs {describe(example_inputs)}: {type(exc).__name__}: "
            f"{text or '(no message)'}. Pass example inputs with the shape and dtype "
            f"{type(model).__name__}.forward() expects (for a single image classifier: a batch tensor such as "
            "torch.randn(1, C, H, W)); nothing was pruned."
        ) from exc
    finally:
        for m, flag in flags:
            m.training = flag


def check_prune_request(model: nn.Module, example_inputs=None, **prune_kwargs) -> None:
    """Validate a :func:`prune` request against ``model`` without pruning, copying or tracing it.

    Checks, raising what :func:`prune` would raise: the granularity; option names (unknown ->
    :class:`ConfigError`) and options the granularity does not use (:class:`ConfigError`); values
    (ratio, scope, threshold, criterion...); name patterns (include / exclude / ignore / layer_ratios)
    against the model's module names (:class:`PruningError` naming the pattern and example names);
    with ``example_inputs``, one eval-mode forward (:class:`InputError` naming the input shapes).
    Channel pruning's layer_ratios are matched against module names here; after tracing,
    :func:`prune` also requires them to name a prunable layer.
    """
    granularity = prune_kwargs.pop("granularity", "weight")
    if granularity not in GRANULARITIES:
        raise PruningError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
    if not isinstance(model, nn.Module):
        raise PruningError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    check_options(granularity, prune_kwargs)
    opts = {**PRUNE_DEFAULTS, **prune_kwargs}
    if granularity == "weight":
        from .unstructured.pruner import check_weight_args, weight_criterion
        from .unstructured.select import layer_ratio_overrides, select_params

        check_weight_args(ratio=opts["ratio"], threshold=opts["threshold"], scope=opts["scope"],
                          relative_to=opts["relative_to"], layer_ratios=opts["layer_ratios"])
        targets = select_params(model, include=opts["include"], exclude=opts["exclude"],
                                include_types=opts["include_types"])
        layer_ratio_overrides([t.key for t in targets], opts["layer_ratios"], {t.key: t.module_name for t in targets})
        weight_criterion(opts["criterion"], opts["seed"], opts["calibration"], opts["loss_fn"], check_data=True)
    else:
        from .structured.api import check_structured_request

        used = {k: v for k, v in opts.items() if k in PRUNE_OPTIONS[granularity]}
        check_structured_request(model, granularity=granularity, **used)
    if example_inputs is not None:
        run_once(model, example_inputs)


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
        overrides; ``include`` / ``exclude`` name patterns; ``include_types`` layer types;
        via ``options``: ``relative_to`` ("remaining" | "total") and ``calibration_batches``.
        Linear / Conv weights and nn.MultiheadAttention's ``in_proj_weight`` are pruned.
      * ``"channel"`` — structured: physically remove filters / channels / neurons / heads
        with every coupled layer kept consistent.
      * ``"block"``   — remove whole residual blocks with identity skips (``include`` /
        ``exclude`` / ``ignore`` choose the candidate blocks).
      * ``"input"``   — remove input features of the first Linear layer.
    ``calibration`` (iterable of ``(inputs, targets)``) and ``loss_fn`` feed data-driven
    criteria (taylor, activation statistics). Structured pruning also takes ``ignore``
    (names / patterns / types kept untouched), ``macs_target`` (fraction or count of MACs
    to keep instead of ``ratio``), ``round_to``, and via ``options``: ``layer_floor``,
    ``reduction`` / ``normalize`` (how a group's per-layer scores combine),
    ``leaf_modules`` (not traced into) and ``tracer`` ("auto" | "fx" | "export").
    :data:`PRUNE_OPTIONS` lists what each granularity takes; an unknown option, or one the
    granularity does not use, raises :class:`ConfigError` (see :func:`check_prune_request`).
    """
    given = dict(criterion=criterion, ratio=ratio, scope=scope, threshold=threshold, layer_ratios=layer_ratios,
                 include=include, exclude=exclude, include_types=include_types, ignore=ignore,
                 macs_target=macs_target, round_to=round_to, calibration=calibration, loss_fn=loss_fn,
                 inplace=inplace, seed=seed, **options)
    check_prune_request(model, None, granularity=granularity, **given)  # nothing copied or traced yet
    used = {k: v for k, v in given.items() if k in PRUNE_OPTIONS[granularity]}
    if granularity == "weight":
        from .unstructured import prune_weights

        return prune_weights(model, example_inputs, **used)
    from .structured import prune_structured
    from .unstructured.select import resolve_types

    if used.get("include_types") is not None:
        used["include_types"] = resolve_types(used["include_types"])  # accept "Conv2d" as well as nn.Conv2d
    if used.get("ratio") is None:
        used["ratio"] = 0.0  # macs_target decides how much goes (check_prune_request made sure it is given)
    return prune_structured(model, example_inputs, granularity=granularity, **used)


def measure(model: nn.Module, example_inputs, **kwargs) -> dict:
    """Parameters, non-zeros, MACs (dense and non-zero), bytes on disk and measured latency (see prunekit.measure)."""
    from .measure import measure as _measure

    return _measure(model, example_inputs, **kwargs)
