"""Fold a fitted linear reducer (PCA, LDA) into the model's first Linear (or 1x1 conv): one module on raw inputs.

With the reducer written as ``z = x A^T + c`` (PCA: ``A = P`` or ``P / sqrt(var)`` when whitened,
``c = -A mean``), a first layer ``y = z W^T + b`` becomes ``y = x (W A)^T + (b + W c)``,
i.e. ``W' = W P^T``-style and ``b' = b - W P^T mean`` in the issue's notation. Image inputs
get an ``nn.Flatten`` in front, so the folded model takes exactly what the reducer took.

Merging costs ``d * out`` MACs per sample in the first layer instead of ``d * k + k * out`` for the
projection followed by the layer; when ``out`` is much wider than ``k`` (a wide first layer on few
components) merging makes the model *bigger*. ``how="prepend"`` keeps the projection as its own
``nn.Linear(d, k)`` (or 1x1 conv) in front of the unchanged model, and ``how="auto"`` picks whichever
executes fewer MACs. Either way the result is one ``nn.Module`` on raw inputs.
"""
from __future__ import annotations

from typing import Optional, Tuple

FOLD_MODES = ("merge", "prepend", "auto")

import torch
from torch import nn

from ..errors import ReducerError
from ..modelutils import clone_model
from ..unstructured.masks import effective
from .reducer import Reducer


class _Found(Exception):
    """Raised from a forward pre-hook to stop the probe run at the first layer with parameters."""

    def __init__(self, name: str, module: nn.Module, inp: torch.Tensor):
        self.name, self.module, self.inp = name, module, inp


def fold_into(model: nn.Module, reducer: Reducer, *, how: str = "merge") -> nn.Module:
    """Return a copy of ``model`` that absorbs ``reducer``, taking the reducer's raw inputs.

    ``model`` must take the reduced features: its first layer with parameters is an
    ``nn.Linear(k, ...)`` fed the model input (possibly through Flatten / Identity), or a 1x1
    ``nn.Conv2d(k, ...)`` fed images whose channels were reduced pixel by pixel (a reducer
    fitted on (N*H*W, C) pixel vectors). Non-linear reducers raise :class:`ReducerError`.

    ``how``: ``"merge"`` multiplies the projection into that first layer (``W' = W A``);
    ``"prepend"`` puts the projection in front as its own layer, leaving the model unchanged;
    ``"auto"`` picks the one with fewer MACs (:func:`fold_macs`).
    """
    if how not in FOLD_MODES:
        raise ReducerError(f"fold_into: how must be one of {', '.join(FOLD_MODES)}, got {how!r}")
    a, c = reducer.affine_map()  # raises the clear error for non-linear reducers
    k, d = a.shape
    name, layer = first_layer(model, k)
    if how == "auto":
        macs = fold_macs(layer, d)
        how = "merge" if macs["merge"] <= macs["prepend"] else "prepend"
    flat = isinstance(layer, nn.Linear) and len(reducer.input_shape_) > 1
    if how == "merge":
        new = _folded_linear(layer, a, c) if isinstance(layer, nn.Linear) else _folded_conv(layer, a, c)
        folded = _replace(clone_model(model), name, new)
        _update_spec(folded, k, d)
        return nn.Sequential(nn.Flatten(), folded) if flat else folded
    proj = _projection(a, c, conv=isinstance(layer, nn.Conv2d), like=layer.weight)
    return nn.Sequential(*([nn.Flatten()] if flat else []), proj, clone_model(model))


def fold_macs(layer: nn.Module, d: int) -> dict:
    """MACs per sample (per pixel for a 1x1 conv) of the first layer merged with a ``d -> k`` projection,
    and of the projection kept in front of it: ``{"merge": d * out, "prepend": d * k + k * out}``."""
    k, out = (layer.in_features, layer.out_features) if isinstance(layer, nn.Linear) else (layer.in_channels, layer.out_channels)
    return {"merge": d * out, "prepend": d * k + k * out}


def first_layer(model: nn.Module, k: int) -> Tuple[str, nn.Module]:
    """Name and module of the first layer with parameters that a ``(2, k)`` input reaches, checked foldable."""
    x = torch.randn(2, k, generator=torch.Generator().manual_seed(0))
    name, module, inp = _probe(model, x)
    if isinstance(module, nn.Linear):
        same = inp.shape[0] == 2 and inp.reshape(2, -1).shape == x.shape and torch.equal(inp.reshape(2, -1), x)
        if module.in_features != k or not same:
            raise ReducerError(
                f"cannot fold a reducer with {k} components into layer {name!r} (Linear({module.in_features}, "
                f"{module.out_features})): the layer does not receive the model's {k} reduced input features unchanged. "
                "Folding needs the first layer to be a Linear on the input; keep the reducer beside the model instead "
                "(ReducedModel / save_pipeline)"
            )
        return name, module
    if isinstance(module, nn.Conv2d) and _is_pointwise(module) and module.in_channels == k:
        img = torch.randn(2, k, 3, 3, generator=torch.Generator().manual_seed(1))
        name2, module2, inp2 = _probe(model, img)
        if name2 == name and torch.equal(inp2, img):
            return name, module
    raise ReducerError(
        f"cannot fold the reducer into layer {name!r} ({type(module).__name__}): folding supports a first nn.Linear "
        f"with in_features={k} on the model input, or a 1x1 nn.Conv2d with in_channels={k} (stride 1, no padding, "
        "groups 1) on channel-reduced images; keep the reducer beside the model instead (ReducedModel / save_pipeline)"
    )


def _probe(model: nn.Module, x: torch.Tensor) -> Tuple[str, nn.Module, torch.Tensor]:
    hooks = []
    for mod_name, module in model.named_modules():
        if any(True for _ in module.parameters(recurse=False)):
            hooks.append(module.register_forward_pre_hook(_stopper(mod_name)))
    try:
        with torch.no_grad():
            model(x)
    except _Found as found:
        return found.name, found.module, found.inp
    except Exception as exc:
        raise ReducerError(
            f"cannot fold: the model does not run on reduced inputs of shape {tuple(x.shape)} ({exc}); "
            "fold_into expects the model trained on the reducer's output"
        ) from exc
    finally:
        for h in hooks:
            h.remove()
    raise ReducerError("cannot fold: the model has no layer with parameters that sees the input")


def _stopper(name: str):
    def hook(module, args):
        raise _Found(name, module, args[0] if args else None)

    return hook


def _is_pointwise(conv: nn.Conv2d) -> bool:
    return (tuple(conv.kernel_size) == (1, 1) and tuple(conv.stride) == (1, 1) and conv.groups == 1
            and tuple(conv.dilation) == (1, 1) and (conv.padding == "valid" or tuple(conv.padding) == (0, 0)))


def _fold_params(weight: torch.Tensor, bias: Optional[torch.Tensor], a, c) -> Tuple[torch.Tensor, torch.Tensor]:
    w = weight.detach().double()
    a_t = torch.as_tensor(a, dtype=torch.float64)
    c_t = torch.as_tensor(c, dtype=torch.float64)
    b = bias.detach().double() if bias is not None else torch.zeros(w.shape[0], dtype=torch.float64)
    return (w @ a_t).to(weight.dtype), (b + w @ c_t).to(weight.dtype)


def _folded_linear(layer: nn.Linear, a, c) -> nn.Linear:
    w, b = _fold_params(effective(layer), layer.bias, a, c)
    new = nn.Linear(w.shape[1], w.shape[0], bias=True, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w)
        new.bias.copy_(b)
    return new


def _folded_conv(layer: nn.Conv2d, a, c) -> nn.Conv2d:
    weight = effective(layer)
    w, b = _fold_params(weight.flatten(1), layer.bias, a, c)
    new = nn.Conv2d(w.shape[1], w.shape[0], 1, bias=True, device=w.device, dtype=w.dtype)
    with torch.no_grad():
        new.weight.copy_(w.reshape(w.shape[0], w.shape[1], 1, 1))
        new.bias.copy_(b)
    return new


def _projection(a, c, *, conv: bool, like: torch.Tensor) -> nn.Module:
    """The reducer ``z = x A^T + c`` as a layer: ``nn.Linear(d, k)`` or a 1x1 ``nn.Conv2d(d, k)``."""
    w = torch.as_tensor(a, dtype=torch.float64).to(like.dtype)
    b = torch.as_tensor(c, dtype=torch.float64).to(like.dtype)
    k, d = w.shape
    layer = nn.Conv2d(d, k, 1, device=like.device, dtype=like.dtype) if conv else nn.Linear(d, k, device=like.device,
                                                                                             dtype=like.dtype)
    with torch.no_grad():
        layer.weight.copy_(w.reshape(k, d, 1, 1) if conv else w)
        layer.bias.copy_(b)
    return layer


def _replace(model: nn.Module, name: str, new: nn.Module) -> nn.Module:
    if not name:  # the model is the layer itself
        return new
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    return model


def _update_spec(folded: nn.Module, k: int, d: int) -> None:
    """Keep a recorded model spec truthful: the folded model's input layer now has ``d`` features."""
    spec = getattr(folded, "_prunekit_spec", None)
    if isinstance(spec, dict) and spec.get("kwargs", {}).get("in_features") == k:
        folded._prunekit_spec = {**spec, "kwargs": {**spec["kwargs"], "in_features": d}}
