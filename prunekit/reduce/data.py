"""Reduce DataSplits (fit on train only) and size a model's input layer to the reduced dimension."""
from __future__ import annotations

import inspect
import logging
from typing import Optional, Tuple

import torch
from torch import nn

from ..data.base import DataSplits
from ..errors import ReducerError
from .reducer import Reducer

log = logging.getLogger(__name__)


def reduce_splits(data: DataSplits, reducer: Reducer) -> DataSplits:
    """Fit ``reducer`` on the training split only and send val/test through its out-of-sample transform."""
    if not reducer.out_of_sample:
        reducer.transform(data.x_train[:1])  # raises the clear "pictures only" ReducerError
    reducer.fit(data.x_train, data.y_train)
    info = {**data.info, "reduced": {"method": reducer.method, "n_components": reducer.n_components_,
                                     "input_shape": list(reducer.input_shape_), "fitted_on": reducer.fitted_on_}}
    return data.replace(
        x_train=reducer.transform(data.x_train),
        x_val=reducer.transform(data.x_val),
        x_test=reducer.transform(data.x_test),
        info=info,
    )


def resize_input(model: nn.Module, model_spec: Optional[dict], k: int, raw_example: torch.Tensor) -> Tuple[nn.Module, dict]:
    """A model taking ``k`` features: rebuilt with ``in_features=k`` when its factory accepts it, else its first
    Linear replaced by a fresh ``nn.Linear(k, out)``. Returns ``(model, model_spec)``; weights are fresh either way.

    A user factory (``model: {name: "pkg.mod:factory"}``) receives ``in_features=k`` as a keyword
    argument when its signature has an ``in_features`` parameter (or ``**kwargs``).
    """
    spec = dict(model_spec or {})
    if spec.get("name") and _accepts_in_features(spec["name"]):
        from ..models import create_model

        kwargs = {**spec.get("kwargs", {}), "in_features": int(k)}
        new = create_model(spec["name"], **kwargs)
        new_spec = {"name": spec["name"], "kwargs": kwargs}
        new._prunekit_spec = new_spec
        return new, new_spec
    return _replace_first_linear(model, k, raw_example), spec


def _accepts_in_features(name: str) -> bool:
    from ..models import MODELS, import_object

    factory = import_object(name) if ":" in name else MODELS.get(name)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return False
    return "in_features" in params or any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values())


def _replace_first_linear(model: nn.Module, k: int, raw_example: torch.Tensor) -> nn.Module:
    from ..modelutils import clone_model
    from .fold import _probe, _replace

    x = raw_example[:2] if len(raw_example) >= 2 else raw_example.repeat(2, *[1] * (raw_example.dim() - 1))
    name, layer, inp = _probe(model, x)
    flat = x.reshape(len(x), -1)
    if not (isinstance(layer, nn.Linear) and inp.reshape(len(inp), -1).shape == flat.shape
            and torch.equal(inp.reshape(len(inp), -1), flat)):
        raise ReducerError(
            f"cannot size the model's input to {k} reduced features: its factory takes no `in_features` argument and its "
            f"first layer {name!r} ({type(layer).__name__}) is not a Linear on the (flattened) input. Give your model "
            "factory an `in_features` parameter: the reduce stage calls it with in_features=<n_components>"
        )
    new = nn.Linear(k, layer.out_features, bias=layer.bias is not None)
    log.info("reduce: replaced %s (Linear(%d, %d)) by a fresh Linear(%d, %d)", name, layer.in_features,
             layer.out_features, k, layer.out_features)
    return _replace(clone_model(model), name, new)
