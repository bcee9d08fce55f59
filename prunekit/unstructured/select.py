"""Which weights to prune: by layer type, by name pattern (include / exclude), with per-layer ratio overrides.

A selected weight is a :class:`Target` ``(key, module_name, module, param)``: ``weight`` of Linear / Conv
layers, and ``in_proj_weight`` (``q/k/v_proj_weight`` when the embedding sizes differ) of
nn.MultiheadAttention, whose ``out_proj`` is a Linear of its own. Name patterns match the module name or
the full ``module.param`` key: exact name, fnmatch glob, or a prefix that also covers a module's children.
"""
from __future__ import annotations

import difflib
import fnmatch
import logging
from typing import Collection, Dict, Iterable, List, NamedTuple, Optional, Sequence, Tuple

from torch import nn

from ..errors import ConfigError, PruningError
from .masks import weight_params

log = logging.getLogger(__name__)

DEFAULT_TYPES: Tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
                                   nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.MultiheadAttention)

TYPE_NAMES = {t.__name__: t for t in (*DEFAULT_TYPES, nn.Embedding, nn.Bilinear)}

PATTERN_HELP = ("A pattern is an exact module name, an fnmatch glob ('features.*', '*.fc') or a prefix that also "
                "covers the module's children ('features').")


class Target(NamedTuple):
    """One prunable weight tensor: ``key`` is ``module_name.param`` (the mask / state-dict name)."""

    key: str
    module_name: str
    module: nn.Module
    param: str


def resolve_types(types: Optional[Iterable]) -> Tuple[type, ...]:
    """Module types from classes or their names (``"Linear"``, ``"Conv2d"``)."""
    if types is None:
        return DEFAULT_TYPES
    if isinstance(types, (str, type)):
        types = [types]
    out = []
    for t in types:
        if isinstance(t, type):
            out.append(t)
        elif isinstance(t, str) and t in TYPE_NAMES:
            out.append(TYPE_NAMES[t])
        elif isinstance(t, str) and hasattr(nn, t) and isinstance(getattr(nn, t), type):
            out.append(getattr(nn, t))
        else:
            raise PruningError(f"unknown layer type {t!r} in include_types; use torch.nn class names such as "
                               f"{', '.join(sorted(TYPE_NAMES))}")
    return tuple(out)


def matches(name: str, patterns: Sequence[str]) -> bool:
    """Glob match (``features.*``, ``*.fc``); a pattern also matches a module's children (``features``)."""
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") or name == p for p in patterns)


def target_matches(target: Target, patterns: Sequence[str]) -> bool:
    """A pattern names the weight through its module name or its full ``module.param`` key."""
    return matches(target.module_name, patterns) or matches(target.key, patterns)


def as_patterns(patterns, option: str) -> Optional[List[str]]:
    """``None`` stays ``None``; a single string becomes ``[string]``; every pattern must be a string."""
    if patterns is None:
        return None
    if isinstance(patterns, str):
        return [patterns]
    out = list(patterns)
    for p in out:
        if not isinstance(p, str):
            raise ConfigError(f"{option} takes module-name patterns (strings) for weight pruning, got {p!r} "
                              f"({type(p).__name__}); select layer types with include_types=[...]")
    return out


def candidates(model: nn.Module, include_types=None, param: Optional[str] = None) -> List[Target]:
    """Every weight of the allowed layer types, in model order (``param``: only that parameter name)."""
    types = resolve_types(include_types)
    out = []
    for name, module in model.named_modules():
        if not name or not isinstance(module, types):
            continue
        if param is None:
            names = weight_params(module)
        else:
            names = (param,) if hasattr(module, param) or hasattr(module, f"{param}_orig") else ()
        out.extend(Target(f"{name}.{p}", name, module, p) for p in names)
    return out


def unmatched_pattern(option: str, pattern: str, model: nn.Module, names: Sequence[str], what: str = "module") -> str:
    """The message for a name pattern that matches nothing: the pattern, near names, example names."""
    close = difflib.get_close_matches(pattern, list(names), n=3, cutoff=0.5)
    examples = list(dict.fromkeys(close + list(names)))[:6]
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    shown = ", ".join(repr(n) for n in examples) or "(the model has no named submodules)"
    return (f"{option} pattern {pattern!r} matches no {what} of {type(model).__name__}{hint}; "
            f"module names look like: {shown}. {PATTERN_HELP}")


def complain(message: str, option: str, defaults: Collection[str] = ()) -> None:
    """Raise :class:`PruningError`, or only log a warning when ``option``'s patterns were a default."""
    if option in defaults:
        log.warning("%s (default patterns, ignored)", message)
        return
    raise PruningError(message)


def check_patterns(model: nn.Module, cands: Sequence[Target], *, include: Optional[Sequence[str]] = None,
                   exclude: Optional[Sequence[str]] = None, defaults: Collection[str] = ()) -> None:
    """Every include pattern selects a prunable weight, every exclude pattern names some module or weight."""
    names = [n for n, _ in model.named_modules() if n]
    type_names = sorted({type(t.module).__name__ for t in cands})
    for p in include or []:
        if any(target_matches(t, [p]) for t in cands):
            continue
        hit = [n for n in names if matches(n, [p])]
        if hit:
            complain(f"include pattern {p!r} matches {', '.join(repr(n) for n in hit[:3])} but no prunable layer "
                     f"(the allowed types here are {type_names or 'none'}); prunable layers: "
                     f"{', '.join(repr(t.module_name) for t in cands[:6]) or '(none)'}. Widen include_types or fix the pattern.",
                     "include", defaults)
        else:
            complain(unmatched_pattern("include", p, model, names), "include", defaults)
    for p in exclude or []:
        if not any(matches(n, [p]) for n in names) and not any(target_matches(t, [p]) for t in cands):
            complain(unmatched_pattern("exclude", p, model, names), "exclude", defaults)


def select_params(model: nn.Module, *, include: Optional[Sequence[str]] = None,
                  exclude: Optional[Sequence[str]] = None, include_types=None, param: Optional[str] = None,
                  defaults: Collection[str] = ()) -> List[Target]:
    """The weights chosen for pruning, in model order; raises if a pattern matches nothing or nothing is chosen.

    ``defaults``: option names ("include", "exclude") whose patterns were not given by the user: a pattern
    of theirs that matches nothing is only logged.
    """
    types = resolve_types(include_types)
    include = as_patterns(include, "include")
    exclude = as_patterns(exclude, "exclude") or []
    cands = candidates(model, types, param)
    check_patterns(model, cands, include=include, exclude=exclude, defaults=defaults)
    chosen = [t for t in cands if (include is None or target_matches(t, include)) and not target_matches(t, exclude)]
    if not chosen:
        known = ", ".join(dict.fromkeys(t.module_name for t in cands[:12])) or "(none of the allowed types)"
        raise PruningError(
            f"the layer selection (include={include}, exclude={exclude}, types={[t.__name__ for t in types]}) "
            f"matches no layer; prunable layers of this model: {known}. Widen include / include_types or narrow exclude."
        )
    return chosen


def select_layers(model: nn.Module, *, include: Optional[Sequence[str]] = None,
                  exclude: Optional[Sequence[str]] = None, include_types=None,
                  param: str = "weight") -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of the selected layers that have ``param`` (default ``weight``), in model order.

    Weight pruning itself uses :func:`select_params`, which also takes nn.MultiheadAttention's in_proj weights.
    """
    return [(t.module_name, t.module) for t in select_params(model, include=include, exclude=exclude,
                                                             include_types=include_types, param=param)]


def layer_ratio_overrides(names: Sequence[str], overrides: Optional[Dict[str, float]],
                          module_of: Optional[Dict[str, str]] = None) -> Dict[str, float]:
    """Map each layer name to its override ratio (first matching pattern wins); errors on unused patterns.

    ``module_of`` maps a name that is a ``module.param`` key to its module name (either may match).
    """
    if not overrides:
        return {}
    module_of = module_of or {}
    out: Dict[str, float] = {}
    for pattern, ratio in overrides.items():
        hit = [n for n in names if matches(n, [pattern]) or (n in module_of and matches(module_of[n], [pattern]))]
        if not hit:
            shown = list(dict.fromkeys(module_of.get(n, n) for n in names))
            raise PruningError(f"layer_ratios pattern {pattern!r} matches no selected layer; selected: {', '.join(shown)}. "
                               f"{PATTERN_HELP}")
        for n in hit:
            out.setdefault(n, ratio)
    return out


def check_ratio(ratio: float, what: str = "ratio") -> float:
    try:
        r = float(ratio)
    except (TypeError, ValueError):
        raise PruningError(f"{what} must be a number in [0, 1), got {ratio!r}") from None
    if not 0.0 <= r < 1.0:
        raise PruningError(f"{what} must be in [0, 1) (the fraction of weights to remove), got {ratio!r}")
    return r
