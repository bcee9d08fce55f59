"""Which layers to prune: by type, by name pattern (include / exclude), with per-layer ratio overrides."""
from __future__ import annotations

import fnmatch
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from torch import nn

from ..errors import PruningError

DEFAULT_TYPES: Tuple[type, ...] = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
                                   nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

TYPE_NAMES = {t.__name__: t for t in (*DEFAULT_TYPES, nn.Embedding, nn.Bilinear)}


def resolve_types(types: Optional[Iterable]) -> Tuple[type, ...]:
    """Module types from classes or their names (``"Linear"``, ``"Conv2d"``)."""
    if types is None:
        return DEFAULT_TYPES
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


def select_layers(model: nn.Module, *, include: Optional[Sequence[str]] = None,
                  exclude: Optional[Sequence[str]] = None, include_types=None,
                  param: str = "weight") -> List[Tuple[str, nn.Module]]:
    """Weighted leaf modules chosen for pruning, in model order; raises if the selection is empty."""
    types = resolve_types(include_types)
    include = [include] if isinstance(include, str) else include
    exclude = [exclude] if isinstance(exclude, str) else (exclude or [])
    chosen = []
    candidates = []
    for name, module in model.named_modules():
        if not isinstance(module, types) or not name:
            continue
        if not hasattr(module, param) and not hasattr(module, f"{param}_orig"):
            continue
        candidates.append(name)
        if include is not None and not matches(name, include):
            continue
        if matches(name, exclude):
            continue
        chosen.append((name, module))
    if not chosen:
        known = ", ".join(candidates[:12]) or "(none of the allowed types)"
        raise PruningError(
            f"the layer selection (include={include}, exclude={exclude}, types={[t.__name__ for t in types]}) "
            f"matches no layer; prunable layers of this model: {known}. Widen include / include_types or narrow exclude."
        )
    return chosen


def layer_ratio_overrides(names: Sequence[str], overrides: Optional[Dict[str, float]]) -> Dict[str, float]:
    """Map each layer name to its override ratio (first matching pattern wins); errors on unused patterns."""
    if not overrides:
        return {}
    out: Dict[str, float] = {}
    for pattern, ratio in overrides.items():
        hit = [n for n in names if matches(n, [pattern])]
        if not hit:
            raise PruningError(f"layer_ratios pattern {pattern!r} matches no selected layer; selected: {', '.join(names)}")
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
