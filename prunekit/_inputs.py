"""Example inputs in every shape users pass them: a tensor, a tuple of tensors, or a dict of keyword tensors."""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import nn

from .errors import InputError

Inputs = Any  # Tensor | tuple[Tensor, ...] | list[Tensor] | dict[str, Tensor]


def split_inputs(inputs: Inputs) -> Tuple[tuple, Dict[str, Any]]:
    """Return ``(args, kwargs)`` for ``model(*args, **kwargs)``."""
    if isinstance(inputs, torch.Tensor):
        return (inputs,), {}
    if isinstance(inputs, (tuple, list)):
        return tuple(inputs), {}
    if isinstance(inputs, dict):
        return (), dict(inputs)
    raise InputError(
        f"example_inputs must be a Tensor, a tuple/list of Tensors or a dict of Tensors, got {type(inputs).__name__}"
    )


def run_model(model: nn.Module, inputs: Inputs) -> Any:
    """Call ``model`` on ``inputs``; a shape/type failure becomes an :class:`InputError` that says so."""
    args, kwargs = split_inputs(inputs)
    try:
        return model(*args, **kwargs)
    except (RuntimeError, TypeError, ValueError, IndexError) as exc:
        shapes = describe(inputs)
        raise InputError(
            f"the model could not run on the example inputs {shapes}: {exc}. "
            "Pass example inputs with the shape and dtype the model's forward() expects "
            "(for a single image classifier: a batch tensor such as torch.randn(1, C, H, W))."
        ) from exc


def describe(inputs: Inputs) -> str:
    args, kwargs = split_inputs(inputs)
    parts = [_desc(a) for a in args] + [f"{k}={_desc(v)}" for k, v in kwargs.items()]
    return "(" + ", ".join(parts) + ")"


def _desc(x: Any) -> str:
    if isinstance(x, torch.Tensor):
        return f"Tensor{tuple(x.shape)}:{str(x.dtype).replace('torch.', '')}"
    return type(x).__name__


def map_tensors(inputs: Inputs, fn) -> Inputs:
    """Apply ``fn`` to every tensor of ``inputs`` keeping the structure."""
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, (tuple, list)):
        return type(inputs)(map_tensors(x, fn) for x in inputs)
    if isinstance(inputs, dict):
        return {k: map_tensors(v, fn) for k, v in inputs.items()}
    return inputs


def with_batch_size(inputs: Inputs, n: int) -> Inputs:
    """Inputs with leading (batch) dimension ``n``: sliced or tiled from the given example."""

    def resize(t: torch.Tensor) -> torch.Tensor:
        if t.dim() == 0:
            return t
        b = t.shape[0]
        if b >= n:
            return t[:n].clone()
        reps = (n + b - 1) // b
        return t.repeat(reps, *([1] * (t.dim() - 1)))[:n].clone()

    return map_tensors(inputs, resize)


def to_device(inputs: Inputs, device: torch.device | str) -> Inputs:
    return map_tensors(inputs, lambda t: t.to(device))


def first_tensor(outputs: Any) -> torch.Tensor:
    """The primary tensor of a model's output (a tensor, the first of a tuple, or ``logits``)."""
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, (tuple, list)) and outputs:
        return first_tensor(outputs[0])
    if isinstance(outputs, dict):
        if "logits" in outputs:
            return outputs["logits"]
        return first_tensor(next(iter(outputs.values())))
    if hasattr(outputs, "logits"):
        return outputs.logits
    raise InputError(f"cannot find a tensor in model output of type {type(outputs).__name__}")
