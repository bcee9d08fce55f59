"""Which axis of a stored weight holds the output rows: Hugging Face's ``Conv1D`` stores its Linear weight transposed.

``transformers.pytorch_utils.Conv1D`` (GPT-2's attention and MLP layers, GPT, ...) computes ``y = x @ W + b`` with
``W`` of shape ``(in_features, out_features)``: the transpose of nn.Linear's ``(out, in)``. Its mask, like every
mask, has the stored weight's shape (torch.nn.utils.prune's ``weight_orig`` / ``weight_mask``), but whatever is
decided per output row (``scope="row"``, Wanda's per-row comparison), per input feature (Wanda's input norms,
SparseGPT's Hessian) or along the input dimension (N:M groups) is decided on :func:`as_rows` -- the weight as
``(out, in)`` -- and mapped back with the same function (a transpose is its own inverse).

The layer is recognised by shape (:func:`prunekit.graph.export_capture.is_transposed_linear`), so ``transformers``
is never imported; :class:`TransposedLinear` stands for it where a layer type is expected (``include_types``).
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..graph.export_capture import is_transposed_linear


class _TransposedLinearType(type):
    def __instancecheck__(cls, obj: Any) -> bool:
        return is_transposed_linear(obj)


class TransposedLinear(metaclass=_TransposedLinearType):
    """Hugging Face's ``Conv1D`` as a layer type: ``isinstance(m, TransposedLinear)`` is true for such a layer
    (``include_types=["Conv1D"]``); never instantiated."""

    def __new__(cls, *args, **kwargs):
        raise TypeError("TransposedLinear only names Hugging Face's Conv1D in include_types; it is not a layer")


def transposed(module: nn.Module, param: str = "weight") -> bool:
    """True when ``module.param`` is stored ``(in, out)``: the weight of a Hugging Face ``Conv1D``."""
    return param == "weight" and is_transposed_linear(module)


def as_rows(module: nn.Module, param: str, tensor: torch.Tensor) -> torch.Tensor:
    """``tensor`` (weight-shaped: the weight, its scores or its mask) with output rows first; its own inverse."""
    return tensor.t() if transposed(module, param) else tensor
