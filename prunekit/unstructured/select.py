"""Which weights to prune: by layer type, by module pattern (include / exclude), with per-layer ratio overrides.

A selected weight is a :class:`Target` ``(key, module_name, module, param)``: ``weight`` of Linear / Conv
layers (Hugging Face's ``Conv1D`` included: a Linear with a transposed weight, see :mod:`.layout`), and
``in_proj_weight`` (``q/k/v_proj_weight`` when the embedding sizes differ) of
nn.MultiheadAttention, whose ``out_proj`` is a Linear of its own. include / exclude / layer_ratios take
module patterns and follow :mod:`prunekit.match` (names, globs, dotted prefixes, class names, types, module
objects; a selected module brings everything inside it); weight pruning adds one thing: a string may also
name one weight by its full ``module.param`` key (``"attn.in_proj_weight"``, ``"*.bias"``).
"""
from __future__ import annotations

import logging
from typing import Any, Collection, Dict, Iterable, List, Mapping, NamedTuple, Optional, Sequence, Tuple

from torch import nn

from .. import match
from ..errors import PruningError
from ..match import PATTERN_HELP, unmatched_message
from .layout import TransposedLinear
from .masks import weight_params

log = logging.getLogger(__name__)

DEFAULT_TYPES: Tuple[type, ...] = (nn.Linear, TransposedLinear, nn.Conv1d, nn.Conv2d, nn.Conv3d,
                                   nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d, nn.MultiheadAttention)

# a name stands for a kind of layer: "Linear" is every linear map y = x W^T + b, Hugging Face's Conv1D (GPT-2's
# attention and MLP layers, the same map with W stored transposed) included; "Conv1D" is that layer alone (not
# torch's nn.Conv1d). A class given itself (nn.Linear) selects by isinstance, as Python does.
TYPE_NAMES = {**{t.__name__: (t,) for t in (*DEFAULT_TYPES, nn.Embedding, nn.Bilinear) if t is not TransposedLinear},
              "Linear": (nn.Linear, TransposedLinear), "Conv1D": (TransposedLinear,)}

unmatched_pattern = unmatched_message  # the name this module used to give it (prunekit.structured.api imports it)
__all__ = ["PATTERN_HELP", "Target", "candidates", "check_patterns", "check_ratio", "complain", "layer_ratio_overrides",
           "named_patterns", "resolve_types", "select_layers", "select_params", "target_matches", "unmatched_pattern"]


class Target(NamedTuple):
    """One prunable weight tensor: ``key`` is ``module_name.param`` (the mask / state-dict name)."""

    key: str
    module_name: str
    module: nn.Module
    param: str


def resolve_types(types: Optional[Iterable]) -> Tuple[type, ...]:
    """Module types from classes or their names (``"Linear"``, ``"Conv2d"``, ``"Conv1D"``: see :data:`TYPE_NAMES`)."""
    if types is None:
        return DEFAULT_TYPES
    if isinstance(types, (str, type)):
        types = [types]
    out = []
    for t in types:
        if isinstance(t, type):
            out.append(t)
        elif isinstance(t, str) and t in TYPE_NAMES:
            out.extend(TYPE_NAMES[t])
        elif isinstance(t, str) and hasattr(nn, t) and isinstance(getattr(nn, t), type):
            out.append(getattr(nn, t))
        else:
            raise PruningError(f"unknown layer type {t!r} in include_types; use torch.nn class names such as "
                               f"{', '.join(sorted(TYPE_NAMES))} (Conv1D: Hugging Face's, a transposed Linear)")
    return tuple(dict.fromkeys(out))


def target_matches(target: Target, patterns: Sequence[Any], model: Optional[nn.Module] = None) -> bool:
    """A pattern selects the weight's module (:mod:`prunekit.match`), or a string names its full ``module.param`` key.

    With ``model`` the whole rule applies (a pattern naming a module that contains the layer selects it too);
    without it only the layer itself is looked at.
    """
    if model is not None:
        hit = match.selects(model, target.module_name, patterns)
    else:
        hit = match.matches_any(target.module_name, target.module, patterns)
    return hit or any(isinstance(p, str) and match.name_matches(target.key, p) for p in patterns)


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


def complain(message: str, option: str, defaults: Collection[str] = ()) -> None:
    """Raise :class:`PruningError`, or only log a warning when ``option``'s patterns were a default."""
    if option in defaults:
        log.warning("%s (default patterns, ignored)", message)
        return
    raise PruningError(message)


def check_patterns(model: nn.Module, cands: Sequence[Target], *, include: Optional[Sequence[Any]] = None,
                   exclude: Optional[Sequence[Any]] = None, defaults: Collection[str] = ()) -> None:
    """Every include pattern selects a prunable weight, every exclude pattern names some module or weight."""
    named = [(n, m) for n, m in model.named_modules() if n]
    names = [n for n, _ in named]
    type_names = sorted({type(t.module).__name__ for t in cands})
    for option, patterns in (("include", include or []), ("exclude", exclude or [])):
        for p in patterns:
            if isinstance(p, nn.Module):
                match.check_patterns(model, option, [p])  # a module object must belong to the model
            if any(target_matches(t, [p], model) for t in cands):
                continue
            hit = [n for n, m in named if match.module_matches(n, m, p)]
            if not hit:
                complain(unmatched_pattern(option, p, model, names), option, defaults)
            elif option == "include":
                complain(f"include pattern {match.pattern_text(p)} matches {', '.join(repr(n) for n in hit[:3])} but no "
                         f"prunable layer (the allowed types here are {type_names or 'none'}); prunable layers: "
                         f"{', '.join(repr(t.module_name) for t in cands[:6]) or '(none)'}. Widen include_types or fix "
                         f"the pattern.", "include", defaults)


def select_params(model: nn.Module, *, include: Optional[Sequence[Any]] = None,
                  exclude: Optional[Sequence[Any]] = None, include_types=None, param: Optional[str] = None,
                  defaults: Collection[str] = ()) -> List[Target]:
    """The weights chosen for pruning, in model order; raises if a pattern matches nothing or nothing is chosen.

    ``include`` / ``exclude``: module patterns (:mod:`prunekit.match`) or ``module.param`` keys; ``include=None``
    selects every weight of the ``include_types``. ``defaults``: option names ("include", "exclude") whose
    patterns were not given by the user: a pattern of theirs that matches nothing is only logged.
    """
    types = resolve_types(include_types)
    include = None if include is None else match.as_patterns(include, "include")
    exclude = match.as_patterns(exclude, "exclude")
    cands = candidates(model, types, param)
    check_patterns(model, cands, include=include, exclude=exclude, defaults=defaults)
    chosen = [t for t in cands
              if (include is None or target_matches(t, include, model)) and not target_matches(t, exclude, model)]
    chosen = _untied(model, chosen, explicit=include is not None and "include" not in defaults)
    if not chosen:
        known = ", ".join(dict.fromkeys(t.module_name for t in cands[:12])) or "(none of the allowed types)"
        raise PruningError(
            f"the layer selection (include={_texts(include)}, exclude={_texts(exclude)}, "
            f"types={[t.__name__ for t in types]}) matches no layer; prunable layers of this model: {known}. "
            "Widen include / include_types or narrow exclude."
        )
    return chosen


def tied_uses(model: nn.Module, targets: Sequence[Target]) -> Dict[str, List[str]]:
    """For each target whose parameter another module also holds (tied weights: GPT-2's ``lm_head.weight`` is
    ``transformer.wte.weight``), the other holders' ``module.param`` names."""
    holders: Dict[int, List[Tuple[int, str]]] = {}
    for mname, mod in model.named_modules(remove_duplicate=False):
        for pname, p in mod._parameters.items():
            if p is not None:
                holders.setdefault(id(p), []).append((id(mod), f"{mname}.{pname}" if mname else pname))
    out: Dict[str, List[str]] = {}
    for t in targets:
        tensor = t.module._parameters.get(f"{t.param}_orig", t.module._parameters.get(t.param))
        others = [name for mod_id, name in holders.get(id(tensor), []) if mod_id != id(t.module)]
        if others:
            out[t.key] = others
    return out


def _untied(model: nn.Module, chosen: List[Target], *, explicit: bool) -> List[Target]:
    """``chosen`` without tied weights. A mask on one holder of a shared parameter would leave the other holders
    dense while the model is masked, and ``finalize`` would then write the masked values into the shared tensor
    (the embedding would change under the model): the default selection leaves such weights out (logged); an
    explicit ``include`` that names one is a PruningError."""
    tied = tied_uses(model, chosen)
    if not tied:
        return chosen
    listed = "; ".join(f"{k} is also {', '.join(v)}" for k, v in tied.items())
    if explicit:
        raise PruningError(f"cannot mask tied weights ({listed}): a mask on one use of a shared parameter leaves its "
                           "other uses dense, and making it permanent would change them too. Exclude these layers, "
                           "or untie the weights first (e.g. layer.weight = nn.Parameter(layer.weight.detach().clone())"
                           "; for Hugging Face models also config.tie_word_embeddings = False)")
    log.info("left out of weight pruning, tied to other layers' parameters: %s", listed)
    return [t for t in chosen if t.key not in tied]


def _texts(patterns: Optional[Sequence[Any]]):
    return None if patterns is None else [p if isinstance(p, str) else match.pattern_text(p) for p in patterns]


def named_patterns(model: nn.Module, include=None, exclude=None, layer_ratios=None):
    """``include``, ``exclude``, ``layer_ratios`` with module objects of ``model`` replaced by their names.

    Call it before copying ``model``: the copy has modules of its own, and a name selects the same modules
    as the object (:func:`prunekit.match.to_names`). Other patterns and ``None`` stay as they are.
    """
    def names(value):
        return value if value is None or isinstance(value, (str, type)) else match.to_names(model, match.as_patterns(value, "include / exclude"))

    ratios = layer_ratios
    if isinstance(layer_ratios, Mapping):
        ratios = dict(zip(match.to_names(model, list(layer_ratios)), layer_ratios.values()))
    return names(include), names(exclude), ratios


def select_layers(model: nn.Module, *, include: Optional[Sequence[str]] = None,
                  exclude: Optional[Sequence[str]] = None, include_types=None,
                  param: str = "weight") -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of the selected layers that have ``param`` (default ``weight``), in model order.

    Weight pruning itself uses :func:`select_params`, which also takes nn.MultiheadAttention's in_proj weights.
    """
    return [(t.module_name, t.module) for t in select_params(model, include=include, exclude=exclude,
                                                             include_types=include_types, param=param)]


def layer_ratio_overrides(names: Sequence[str], overrides: Optional[Mapping[Any, float]],
                          module_of: Optional[Dict[str, str]] = None, *,
                          model: Optional[nn.Module] = None) -> Dict[str, float]:
    """Map each layer name to its override ratio (first matching pattern wins); errors on unused patterns.

    ``names``: the selected layers' names or ``module.param`` keys; ``module_of`` maps a key to its module
    name (either may match a string pattern). With ``model`` every pattern follows :mod:`prunekit.match`
    (class names, types, module objects, enclosing modules); without it only names can be matched, so a
    type or module object is skipped here (checked where the model is passed) and a string must match a name.
    """
    if not overrides:
        return {}
    if not isinstance(overrides, Mapping):
        raise PruningError(f"layer_ratios must be a dict {{module pattern: ratio}}, got {type(overrides).__name__}")
    module_of = module_of or {}

    def hits(n: str, pattern) -> bool:
        if isinstance(pattern, str) and (match.name_matches(n, pattern) or match.name_matches(module_of.get(n, n), pattern)):
            return True
        return model is not None and match.selects(model, module_of.get(n, n), [pattern])

    out: Dict[str, float] = {}
    for pattern, ratio in overrides.items():
        if model is None and not isinstance(pattern, str):
            continue
        if model is not None and isinstance(pattern, nn.Module):
            match.check_patterns(model, "layer_ratios", [pattern])  # a module object must belong to the model
        hit = [n for n in names if hits(n, pattern)]
        if not hit:
            shown = list(dict.fromkeys(module_of.get(n, n) for n in names))
            raise PruningError(unmatched_message("layer_ratios", pattern, model, shown, what="selected layer"))
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
