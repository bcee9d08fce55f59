"""TorchScript export: torch.jit.trace (falls back to torch.jit.script), saved with torch.jit.save, verified on two inputs.

Tracing freezes Python control flow on tensor values to the branch the example input took; the
TracerWarnings torch raises then name the offending line. They are recorded, not suppressed: logged at
WARNING when the file still passes verification, quoted in the :class:`ExportError` when it does not.
With ``method="auto"`` a trace that fails verification is replaced by ``torch.jit.script``, which
keeps the control flow, and that file is verified too.
"""
from __future__ import annotations

import functools
import logging
import warnings
from pathlib import Path
from typing import Callable, List, Optional

import torch
from torch import nn

from .._inputs import Inputs, split_inputs
from .attempts import Method, TryMessages, failure_message, log_other_warnings, tracer_warnings, try_methods
from .base import register_exporter
from .errors import ExportError
from .verify import Verification, verify_export

log = logging.getLogger(__name__)

MESSAGES = TryMessages(
    write_failed="TorchScript %(name)s failed",
    verify_failed="TorchScript %(name)s failed verification: %(details)s",
    fallback_used="TorchScript export of %(model)s: %(attempts)s; used %(label)s instead, which passed verification",
    tracer_warned="TorchScript trace of %(model)s passed verification on the example and a second input, but the "
                  "tracer warned (the file may be wrong for other inputs; method='script' keeps control flow): "
                  "%(warnings)s",
)


@register_exporter("torchscript")
def export_torchscript(model: nn.Module, example_inputs: Inputs, path: Path, *, method: str = "auto",
                       check: Optional[Callable[[Path], Verification]] = None) -> Path:
    """Write ``model`` (finalized, eval mode) to ``path`` as TorchScript.

    ``method``: ``"trace"``, ``"script"`` or ``"auto"`` (trace; script if tracing fails or, given
    ``check``, if the traced file fails verification). ``check`` (given by
    :func:`prunekit.export.export`) verifies each written file.
    """
    if method not in ("auto", "trace", "script"):
        raise ExportError(f"torchscript method must be 'auto', 'trace' or 'script', got {method!r}")
    tries = ["trace", "script"] if method == "auto" else [method]
    methods = [Method("torch.jit.trace" if how == "trace" else "torch.jit.script",
                      functools.partial(_write, model, example_inputs, path, how), name=how) for how in tries]
    passed, attempts = try_methods(model, path, methods, check, MESSAGES, log)
    if passed:
        return path
    final = getattr(check, "target", None) or path
    if all(a.verification is None for a in attempts):
        raise ExportError(failure_message("torchscript", model, final, attempts,
                                          "try fmt='onnx', or make forward() scriptable (type annotations, no "
                                          "Python-only features); "))
    extra = "" if method != "trace" else "try method='script' (or 'auto'); "
    if method == "auto" and any(a.error for a in attempts):
        extra = "make forward() scriptable (type annotations, no Python-only features) so method='script' works, or "
    raise ExportError(failure_message("torchscript", model, final, attempts, extra))


def _write(model: nn.Module, example_inputs: Inputs, path: Path, how: str) -> List[str]:
    """Trace or script ``model`` and save it to ``path``; returns the TracerWarnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")  # torch.jit is deprecated upstream (debug log); TracerWarnings are kept
        scripted = _trace(model, example_inputs) if how == "trace" else torch.jit.script(model)
        torch.jit.save(scripted, str(path))
    log_other_warnings(caught)
    return tracer_warnings(caught)


def _trace(model: nn.Module, example_inputs: Inputs):
    args, kwargs = split_inputs(example_inputs)
    with torch.no_grad():
        if kwargs:
            return torch.jit.trace(model, example_kwarg_inputs=kwargs)
        return torch.jit.trace(model, args)


def verify_torchscript(model: nn.Module, example_inputs: Inputs, path: str | Path, atol: float = 1e-5, *,
                       rtol: float = 0.0) -> float:
    """Max |TorchScript - eager| over all outputs on ``example_inputs`` and on a second, different input
    (other values, batch size + 1); raises :class:`ExportError` above ``atol + rtol * max|eager output|``."""
    return verify_export(model, example_inputs, path, "torchscript", atol=atol, rtol=rtol).max_abs_diff

