"""TorchScript export: torch.jit.trace (falls back to torch.jit.script), saved with torch.jit.save, verified on two inputs.

Tracing freezes Python control flow on tensor values to the branch the example input took; the
TracerWarnings torch raises then name the offending line. They are recorded, not suppressed: logged at
WARNING when the file still passes verification, quoted in the :class:`ExportError` when it does not.
With ``method="auto"`` a trace that fails verification is replaced by ``torch.jit.script``, which
keeps the control flow, and that file is verified too.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Callable, List, Optional

import torch
from torch import nn

from .._inputs import Inputs, split_inputs
from .base import register_exporter
from .errors import ExportError
from .prepare import flat_outputs
from .verify import Attempt, Verification, _short, failure_message, log_other_warnings, register_runner, tracer_warnings, \
    verify_export

log = logging.getLogger(__name__)


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
    attempts: List[Attempt] = []
    for how in tries:
        label = "torch.jit.trace" if how == "trace" else "torch.jit.script"
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # torch.jit is deprecated upstream (debug log); TracerWarnings are kept
                scripted = _trace(model, example_inputs) if how == "trace" else torch.jit.script(model)
                torch.jit.save(scripted, str(path))
        except Exception as exc:
            attempts.append(Attempt(label, error=_short(exc)))
            log.debug("TorchScript %s failed", how, exc_info=True)
            continue
        log_other_warnings(caught)
        traced = tracer_warnings(caught)
        verification = check(path) if check is not None else None
        if verification is not None and not verification.ok:
            attempts.append(Attempt(label, verification=verification, tracer_warnings=traced))
            log.debug("TorchScript %s failed verification: %s", how, verification.describe())
            continue
        if attempts:
            log.warning("TorchScript export of %s: %s; used %s instead, which passed verification",
                        type(model).__name__, " ".join(a.describe() for a in attempts), label)
        if traced:
            log.warning("TorchScript trace of %s passed verification on the example and a second input, but the "
                        "tracer warned (the file may be wrong for other inputs; method='script' keeps control flow): %s",
                        type(model).__name__, " | ".join(traced))
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


class _JitRunner:
    dynamic_batch = True  # a TorchScript module takes any batch size (a frozen size shows up as a deviation)

    def __init__(self, path: Path, device: torch.device):
        self.module = torch.jit.load(str(path), map_location=device).eval()

    def __call__(self, inputs: Inputs) -> List[torch.Tensor]:
        args, kwargs = split_inputs(inputs)
        with torch.no_grad():
            return flat_outputs(self.module(*args, **kwargs))


@register_runner("torchscript", atol=1e-5, rtol=1e-5)
def _load_torchscript(path: Path, device: torch.device) -> _JitRunner:
    return _JitRunner(path, device)
