"""Typed configs: dataclasses validated from plain dicts (recipe sections); unknown keys and wrong types are named errors.

Lives at the package root so any layer (data, reduce, ...) can accept a dict config without importing the recipe driver.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, Literal, Union, get_args, get_origin

from .errors import ConfigError, PruningError


def from_dict(cls: type, data: Any, where: str = "") -> Any:
    """Build dataclass ``cls`` from ``data``, checking every key and value type.

    ``where`` is the dotted recipe path used in error messages (e.g. ``"prune"``).
    """
    if data is None:
        data = {}
    if dataclasses.is_dataclass(data) and isinstance(data, cls):
        return data
    if not isinstance(data, dict):
        raise ConfigError(f"recipe section {where or cls.__name__!r} must be a mapping, got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        key = f"{where}.{unknown[0]}" if where else unknown[0]
        raise ConfigError(f"unknown recipe key {key!r}; allowed keys here: {', '.join(sorted(fields))}")
    kwargs = {}
    for name, value in data.items():
        kwargs[name] = coerce(hints[name], value, f"{where}.{name}" if where else name)
    try:
        obj = cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"recipe section {where or cls.__name__!r}: {exc}") from exc
    validate = getattr(obj, "validate", None)
    if callable(validate):
        try:
            validate()
        except PruningError as exc:  # a bad pruning option value (prune:): a recipe error, with its section
            raise ConfigError(f"recipe section {where or cls.__name__!r}: {exc}") from exc
    return obj


def to_dict(obj: Any) -> Any:
    """The inverse of :func:`from_dict` (dataclasses -> plain dicts), for results.json."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


def describe_type(tp: Any) -> str:
    origin = get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(tp))
    if origin in (Union, types.UnionType):
        return " | ".join(describe_type(a) for a in get_args(tp))
    if origin in (list, tuple):
        args = get_args(tp)
        return f"list of {describe_type(args[0])}" if args else "list"
    if origin is dict:
        k, v = get_args(tp) or (Any, Any)
        return f"mapping of {describe_type(k)} to {describe_type(v)}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return f"mapping ({tp.__name__})"
    return getattr(tp, "__name__", str(tp))


def coerce(tp: Any, value: Any, where: str) -> Any:
    """Check/convert ``value`` against type ``tp``; raise ConfigError naming ``where`` and the allowed values."""
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin is Literal:
        allowed = get_args(tp)
        if value not in allowed:
            raise ConfigError(f"recipe key {where!r} = {value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        if len(options) == 1 or (isinstance(value, dict) and any(dataclasses.is_dataclass(a) for a in options)):
            # one real choice: its own error is the most precise (e.g. an unknown nested key)
            target = options[0] if len(options) == 1 else next(a for a in options if dataclasses.is_dataclass(a))
            return coerce(target, value, where)
        for arg in options:
            try:
                return coerce(arg, value, where)
            except ConfigError:
                pass
        raise ConfigError(f"recipe key {where!r} = {value!r} has the wrong type; expected {describe_type(tp)}")
    if origin in (list, tuple):
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"recipe key {where!r} must be a list ({describe_type(tp)}), got {value!r}")
        (arg,) = get_args(tp)[:1] or (Any,)
        return [coerce(arg, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"recipe key {where!r} must be a mapping ({describe_type(tp)}), got {value!r}")
        kt, vt = get_args(tp) or (Any, Any)
        return {coerce(kt, k, where): coerce(vt, v, f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, where)
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"recipe key {where!r} must be true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"recipe key {where!r} must be an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"recipe key {where!r} must be a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"recipe key {where!r} must be a string, got {value!r}")
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ConfigError(f"recipe key {where!r} must be {describe_type(tp)}, got {value!r}")
    return value
