"""Which model a checkpoint is loaded into: the caller's instance, name or factory, or the file's allow-listed model_spec."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from torch import nn

from ..errors import CheckpointError
from ..modelutils import clone_model
from ..models import MODELS, create_model

_PASS_MODEL = "pass model=<an instance or a factory>"


def build_architecture(model: Any, meta: dict, path: Path, trust_model_spec: bool) -> nn.Module:
    """A fresh model to load into: a copy of ``model``, ``model`` built, or the saved ``model_spec`` built.

    A saved spec is only built when it names a model registered in ``prunekit.models.MODELS``,
    or when ``trust_model_spec`` is set; anything else is refused before it is imported.
    """
    if isinstance(model, nn.Module):
        return clone_model(model)  # the caller's instance stays untouched if loading fails
    if isinstance(model, str):
        return create_model(model)  # the caller's own choice: importing "pkg.mod:factory" is fine
    if callable(model):
        built = model()
        if not isinstance(built, nn.Module):
            raise CheckpointError(f"the model factory passed to load returned {type(built).__name__}, expected a torch.nn.Module")
        return built
    spec = meta.get("model_spec")
    if not spec:
        raise CheckpointError(
            f"{path} does not record its architecture; pass model=<an instance, a registered name or a factory>"
        )
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("kwargs") or {}, dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: its model_spec {spec!r} is malformed (expected "
                              f"{{'name': str, 'kwargs': dict}}); {_PASS_MODEL}")
    name, kwargs = spec["name"], dict(spec.get("kwargs") or {})
    if name in MODELS:  # a plain dict lookup: nothing is imported unless the caller allowed it
        factory: Callable[..., Any] = MODELS.get(name)
    elif trust_model_spec:
        def factory(**kw):
            return create_model(name, **kw)
    else:
        raise CheckpointError(
            f"checkpoint {str(path)!r} names its architecture {name!r} (kwargs {kwargs}), which is not a model registered "
            "in prunekit.models.MODELS; refusing to import and call it, because a forged file could name any function "
            "(e.g. 'os:system') and run code. To load it safely, pass the architecture yourself: "
            "prunekit.load(path, model=<an instance or a factory>), or register the factory before loading with "
            f"@prunekit.models.register_model({name!r}). If you trust this file, "
            "prunekit.load(path, trust_model_spec=True) imports and calls it."
        )
    try:
        built = factory(**kwargs)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: building its architecture {name!r} with kwargs {kwargs} failed "
            f"({type(exc).__name__}: {exc}); {_PASS_MODEL}"
        ) from exc
    if not isinstance(built, nn.Module):
        raise CheckpointError(f"checkpoint {str(path)!r}: model factory {name!r} returned {type(built).__name__}, "
                              f"expected a torch.nn.Module; {_PASS_MODEL}")
    return built
