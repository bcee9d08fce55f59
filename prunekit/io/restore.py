"""Fitting saved state into a model: per-module state-dict versions, mask placeholders, and shape/key checks."""
from __future__ import annotations

from collections import OrderedDict
from pathlib import Path
from typing import Any, Dict

import torch
from torch import nn

from ..errors import CheckpointError
from ..modelutils import state_metadata  # noqa: F401  (re-exported: io.checkpoint imports it from here)
from ..unstructured.masks import set_mask
from .integrity import malformed_entry


def with_state_metadata(state: Dict[str, torch.Tensor], saved: Any, path: Path) -> Dict[str, torch.Tensor]:
    """The state dict as an OrderedDict carrying the saved per-module versions (torch's ``_load_from_state_dict`` reads them)."""
    if saved is None:
        return state
    if not isinstance(saved, dict) or not all(isinstance(v, dict) for v in saved.values()):
        raise malformed_entry(path, "state_metadata")
    out: Dict[str, torch.Tensor] = OrderedDict(state)
    out._metadata = OrderedDict((k, dict(v)) for k, v in saved.items())  # type: ignore[attr-defined]
    return out


def install_masks(model: nn.Module, masked: Any, path: Path) -> None:
    """Put all-ones masks where the checkpoint has masks, so ``load_state_dict`` finds ``X_orig`` / ``X_mask``."""
    if not isinstance(masked, list) or not all(isinstance(k, str) for k in masked):
        raise malformed_entry(path, "masked")
    for key in masked:
        mod_name, _, pname = key.rpartition(".")
        try:
            module = model.get_submodule(mod_name)
        except AttributeError:
            raise CheckpointError(
                f"checkpoint {str(path)!r} masks {key!r} but the model has no layer {mod_name!r}: it was saved from "
                "another architecture; load it into the model it was saved from"
            ) from None
        current = getattr(module, f"{pname}_orig", None) if hasattr(module, f"{pname}_mask") else getattr(module, pname, None)
        if not isinstance(current, nn.Parameter):
            raise CheckpointError(
                f"checkpoint {str(path)!r} masks {key!r} but layer {mod_name!r} ({type(module).__name__}) has no such "
                "parameter: it was saved from another architecture; load it into the model it was saved from"
            )
        set_mask(module, pname, torch.ones_like(current))


def check_compatible(model: nn.Module, state: Dict[str, torch.Tensor], strict: bool, path: Path) -> None:
    """Raise CheckpointError listing shape mismatches (and, if ``strict``, missing/unexpected keys) before loading."""
    expected = model.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
             for k, v in state.items() if k in expected and tuple(expected[k].shape) != tuple(v.shape)]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if wrong:
        problems.append("shape mismatch: " + "; ".join(wrong[:6]))
    if strict and missing:
        problems.append("missing keys: " + ", ".join(missing[:6]))
    if strict and unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected[:6]))
    if problems:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match the model ({' | '.join(problems)}). "
            "Load it into the architecture it was saved from (same model and constructor arguments)."
        )
