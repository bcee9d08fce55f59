"""TorchScript export: torch.jit.trace (falls back to torch.jit.script), saved with torch.jit.save."""
from __future__ import annotations

import logging
import warnings
from pathlib import Path

import torch
from torch import nn

from .._inputs import Inputs, run_model, split_inputs
from .base import register_exporter
from .errors import ExportError
from .prepare import finalized_copy, flat_outputs, max_abs_diff

log = logging.getLogger(__name__)


@register_exporter("torchscript")
def export_torchscript(model: nn.Module, example_inputs: Inputs, path: Path, *, method: str = "auto") -> Path:
    """Write ``model`` (finalized, eval mode) to ``path`` as TorchScript.

    ``method``: ``"trace"``, ``"script"`` or ``"auto"`` (trace, then script if tracing fails).
    """
    if method not in ("auto", "trace", "script"):
        raise ExportError(f"torchscript method must be 'auto', 'trace' or 'script', got {method!r}")
    tries = ["trace", "script"] if method == "auto" else [method]
    errors = []
    for how in tries:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit is deprecated upstream; it still works and users ask for it
                scripted = _trace(model, example_inputs) if how == "trace" else torch.jit.script(model)
                torch.jit.save(scripted, str(path))
            return path
        except Exception as exc:
            errors.append(f"{how}: {type(exc).__name__}: {exc}")
            log.debug("TorchScript %s failed", how, exc_info=True)
    raise ExportError(f"could not export {type(model).__name__} to TorchScript. " + " | ".join(errors)
                      + ". Try fmt='onnx', or make forward() scriptable (type annotations, no Python-only features).")


def _trace(model: nn.Module, example_inputs: Inputs):
    args, kwargs = split_inputs(example_inputs)
    with torch.no_grad():
        if kwargs:
            return torch.jit.trace(model, example_kwarg_inputs=kwargs)
        return torch.jit.trace(model, args)


def verify_torchscript(model: nn.Module, example_inputs: Inputs, path: str | Path, atol: float = 1e-5) -> float:
    """Max |TorchScript - eager| over all outputs on ``example_inputs``; raises :class:`ExportError` above ``atol``."""
    clone = finalized_copy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        loaded = torch.jit.load(str(path))
    with torch.no_grad():
        expected = flat_outputs(run_model(clone, example_inputs))
        got = flat_outputs(run_model(loaded.eval(), example_inputs))
    diff = max_abs_diff(expected, got)
    if diff > atol:
        raise ExportError(f"TorchScript model {path} differs from eager PyTorch by {diff:.3g} (> atol {atol:g})")
    return diff
