"""Model utilities every stage needs: a deepcopy that works on masked models, parameter counting."""
from __future__ import annotations

import copy
from typing import Any, Dict, Mapping, Optional

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


def state_metadata(state: Mapping[str, torch.Tensor]) -> Optional[Dict[str, Dict[str, Any]]]:
    """``state_dict()._metadata`` (module prefix -> {"version": n}) as JSON data, or None."""
    md = getattr(state, "_metadata", None)
    if not md:
        return None
    return {prefix: {k: v for k, v in entry.items()
                     if isinstance(k, str) and (v is None or isinstance(v, (bool, int, float, str)))}
            for prefix, entry in md.items() if isinstance(prefix, str) and isinstance(entry, dict)}
