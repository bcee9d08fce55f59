"""Model utilities every stage needs: a deepcopy that works on masked models, parameter counting."""
from __future__ import annotations

import copy

import torch
from torch import nn


def clone_model(model: nn.Module) -> nn.Module:
    """``copy.deepcopy`` that also works on models holding torch.nn.utils.prune masks.

    A masked module keeps ``weight = weight_orig * weight_mask`` as a non-leaf tensor
    attribute, which deepcopy refuses; it is swapped for a detached copy during the
    copy (the forward pre-hook recomputes it on the next call anyway).
    """
    saved = []
    for module in model.modules():
        for key, value in list(vars(module).items()):
            if isinstance(value, torch.Tensor) and not isinstance(value, nn.Parameter) and value.grad_fn is not None:
                saved.append((module, key, value))
                setattr(module, key, value.detach())
    try:
        return copy.deepcopy(model)
    finally:
        for module, key, value in saved:
            setattr(module, key, value)
