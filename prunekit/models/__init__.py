"""Registered model architectures: ``create_model("name", **kw)``; users add theirs with ``@register_model``."""
from __future__ import annotations

import importlib
import os
import sys
from typing import Any, Callable

from torch import nn

from ..errors import ConfigError
from ..registry import Registry

MODELS: Registry[Callable[..., nn.Module]] = Registry("model")


def register_model(name: str | None = None, **kw: Any):
    return MODELS.register(name, **kw)


def create_model(spec: str, **kwargs: Any) -> nn.Module:
    """Build a model from a registered name or an importable ``"package.module:factory"`` path."""
    if ":" in spec:
        factory = import_object(spec)
        model = factory(**kwargs)
    else:
        model = MODELS.create(spec, **kwargs)
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model factory {spec!r} returned {type(model).__name__}, expected a torch.nn.Module")
    return model


def import_object(path: str) -> Any:
    """Import ``"package.module:attr"``; errors name the missing module/attribute."""
    mod_name, _, attr = path.partition(":")
    if not mod_name or not attr:
        raise ConfigError(f"{path!r} is not of the form 'package.module:attribute'")
    cwd_on_path()
    try:
        mod = importlib.import_module(mod_name)
    except ImportError as exc:
        raise ConfigError(f"cannot import module {mod_name!r} (from {path!r}): {exc}") from exc
    obj = mod
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise ConfigError(f"module {mod_name!r} has no attribute {attr!r} (from {path!r})")
        obj = getattr(obj, part)
    return obj


def cwd_on_path() -> None:
    """Make the working directory importable, as ``python -m`` does (the console script does not)."""
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)


# registered architectures live in sibling modules; importing them fills MODELS
from . import cnn, lenet, mlp, mobilenet, resnet, vgg  # noqa: E402,F401
