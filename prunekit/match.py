"""Which modules: the one rule every option that names modules follows.

``include``, ``exclude``, ``ignore``, ``freeze``, ``layer_ratios`` (weight and channel pruning alike),
block candidates, regularisers' ``include`` / ``exclude`` and ``leaf_modules`` all take *module
patterns*. A pattern **names** a module (called ``name`` in the model, the root excluded) when it is

* a string equal to ``name``                                ``"features.0"``
* a string fnmatch glob matching ``name``                   ``"features.*"``, ``"*.fc"``
* a string naming a dotted prefix of ``name``               ``"features"`` names ``"features.0.conv"``
  (whole dotted parts only: ``"feat"`` does not name ``"features.0"``)
* a string equal to the module's class name                 ``"Conv2d"``, ``"BatchNorm2d"``, ``"MyBlock"``
* a type the module is an instance of                       ``nn.Conv2d``
* the module object itself                                  ``model.fc``

and a pattern **selects** the modules it names *and everything inside them*: ``exclude=[MyBlock]``
or ``exclude=[model.block]`` keeps the layers inside those blocks too, just as ``exclude=["block"]``
does. :func:`matching` / :func:`selects` apply the whole rule; :func:`module_matches` is the test of
one module by itself (what "a pattern matches no module" is checked against, see
:func:`check_patterns`), so a typo never silently selects nothing.

Weight pruning also lets a string name one weight through its ``module.param`` key
(``"attn.in_proj_weight"``).
"""
from __future__ import annotations

import difflib
import fnmatch
from typing import Any, Iterable, List, Mapping, Optional, Sequence, Set, Tuple

from torch import nn

from .errors import ConfigError, PruningError

PATTERN_HELP = ("A module pattern is an exact module name, an fnmatch glob ('features.*', '*.fc'), a dotted prefix "
                "('features' covers 'features.0.conv', 'feat' does not), a class name ('Conv2d'), a module type or a "
                "module of the model; the modules it names are selected with everything inside them.")

Pattern = Any  # str | type | nn.Module


def as_patterns(value: Any, option: str) -> List[Pattern]:
    """``None`` -> ``[]``; one pattern (a string, a type or a module) -> ``[it]``; a sequence -> its list.

    Anything else (a number, a dict of patterns where a list is expected...) raises :class:`ConfigError`
    naming ``option``.
    """
    if value is None:
        return []
    if isinstance(value, (str, type, nn.Module)):
        return [value]
    if isinstance(value, Mapping) or not isinstance(value, Iterable):
        raise ConfigError(f"{option} takes module patterns (a name, glob, prefix, class name, type or module, or a "
                          f"list of them), got {type(value).__name__} {value!r}. {PATTERN_HELP}")
    out = list(value)
    for p in out:
        if not isinstance(p, (str, type, nn.Module)):
            raise ConfigError(f"{option} takes module patterns, got {p!r} ({type(p).__name__}) in the list. {PATTERN_HELP}")
    return out


def name_matches(name: str, pattern: str) -> bool:
    """The string part of the rule: exact name, fnmatch glob, or dotted prefix (``"feat"`` is no prefix of ``"features.0"``)."""
    return name == pattern or name.startswith(pattern + ".") or fnmatch.fnmatchcase(name, pattern)


def module_matches(name: str, module: Optional[nn.Module], pattern: Pattern) -> bool:
    """Whether ``pattern`` names the module ``name`` itself (``module`` may be None when only the name is known).

    A string's prefix form names the children as well; a class name, a type or a module object names only
    the modules it is: use :func:`selects` / :func:`matching` for the full rule (children included).
    """
    if isinstance(pattern, str):
        if name_matches(name, pattern):
            return True
        return module is not None and type(module).__name__ == pattern
    if isinstance(pattern, type):
        return module is not None and isinstance(module, pattern)
    if isinstance(pattern, nn.Module):
        return module is pattern
    return False


def matches_any(name: str, module: Optional[nn.Module], patterns: Sequence[Pattern]) -> bool:
    """:func:`module_matches` for any of ``patterns`` (the module by itself, no ancestors looked at)."""
    return any(module_matches(name, module, p) for p in patterns)


def _lineage(model: nn.Module, name: str) -> List[Tuple[str, nn.Module]]:
    """``(name, module)`` of every module from the outermost one containing ``name`` down to ``name`` (root excluded)."""
    out, mod, parts = [], model, name.split(".")
    for i, part in enumerate(parts):
        mod = mod._modules.get(part) if isinstance(mod, nn.Module) else None
        if mod is None:
            break
        out.append((".".join(parts[: i + 1]), mod))
    return out


def selects(model: nn.Module, name: str, patterns: Sequence[Pattern]) -> bool:
    """The whole rule for one module: a pattern names ``name`` or a module containing it."""
    if not name:
        return False
    return any(matches_any(n, m, patterns) for n, m in _lineage(model, name))


def first_match(name: str, module: Optional[nn.Module], mapping: Mapping[Any, Any],
                model: Optional[nn.Module] = None) -> Tuple[Optional[Any], Any]:
    """``(pattern, value)`` of the first entry of ``mapping`` whose pattern selects the module, else ``(None, None)``.

    ``layer_ratios`` uses it: the first matching pattern wins, in the order the mapping lists them. With
    ``model`` the whole rule applies (a pattern naming an enclosing module selects ``name`` too); without it
    only ``name`` / ``module`` themselves are looked at.
    """
    for pat, value in mapping.items():
        if (selects(model, name, [pat]) if model is not None else module_matches(name, module, pat)):
            return pat, value
    return None, None


def matching(model: nn.Module, patterns: Sequence[Pattern]) -> List[str]:
    """Names of the modules of ``model`` (root excluded) the patterns select, children included, in model order."""
    chosen: Set[str] = set()
    out = []
    for n, m in model.named_modules():
        if n and (n.rpartition(".")[0] in chosen or matches_any(n, m, patterns)):
            chosen.add(n)
            out.append(n)
    return out


def pattern_text(pattern: Pattern) -> str:
    """How messages show a pattern: ``'features.*'``, ``type Conv2d``, ``Linear object``."""
    if isinstance(pattern, str):
        return repr(pattern)
    if isinstance(pattern, type):
        return f"type {pattern.__name__}"
    return f"{type(pattern).__name__} object"


def unmatched_message(option: str, pattern: Pattern, model: Optional[nn.Module], names: Optional[Sequence[str]] = None,
                      what: str = "module") -> str:
    """The message for a pattern that matches nothing: the option, the pattern, near names, example names, the rule."""
    if names is None:
        names = [n for n, _ in model.named_modules() if n] if model is not None else []
    names = list(names)
    classes = sorted({type(m).__name__ for n, m in model.named_modules() if n}) if model is not None else []
    close: List[str] = []
    if isinstance(pattern, str):
        close = difflib.get_close_matches(pattern, names, n=3, cutoff=0.5) or \
            difflib.get_close_matches(pattern, classes, n=2, cutoff=0.6)
    elif isinstance(pattern, type):
        close = difflib.get_close_matches(pattern.__name__, classes, n=2, cutoff=0.6)
    hint = f" (did you mean {close[0]!r}?)" if close else ""
    examples = list(dict.fromkeys([c for c in close if c in names] + names))[:6]
    shown = ", ".join(repr(n) for n in examples) or "(the model has no named submodules)"
    of = f" of {type(model).__name__}" if model is not None else ""
    kinds = f"; class names: {', '.join(classes[:8])}" if classes else ""
    return (f"{option} pattern {pattern_text(pattern)} matches no {what}{of}{hint}; module names look like: {shown}"
            f"{kinds}. {PATTERN_HELP}")


def check_patterns(model: nn.Module, option: str, patterns: Iterable[Pattern], error: type = PruningError) -> None:
    """Every pattern names at least one module of ``model``; else ``error`` (default :class:`PruningError`) naming it.

    A module object must be a submodule of ``model``.
    """
    named = [(n, m) for n, m in model.named_modules() if n]
    for pat in patterns:
        if pat is model:
            raise error(f"{option} lists the model itself; name its submodules instead, such as "
                        f"{[n for n, _ in named[:3]]}. {PATTERN_HELP}")
        if isinstance(pat, nn.Module) and not any(m is pat for _, m in named):
            raise error(f"{option} lists a {type(pat).__name__} object that is not a submodule of "
                        f"{type(model).__name__} (a copy of the model has its own modules); pass module names such as "
                        f"{[n for n, _ in named[:3]]}. {PATTERN_HELP}")
        if not any(module_matches(n, m, pat) for n, m in named):
            raise error(unmatched_message(option, pat, model, [n for n, _ in named]))


def to_names(model: nn.Module, patterns: Sequence[Pattern]) -> List[Any]:
    """Module objects replaced by their names in ``model`` (strings and types stay): JSON-able patterns.

    The rule gives a name and the module object the same selection (the module and everything inside it),
    so the result selects the same modules of ``model`` and the same-named ones of a copy of it.
    """
    names = {id(m): n for n, m in model.named_modules() if n}
    return [names.get(id(p), p) if isinstance(p, nn.Module) else p for p in patterns]
