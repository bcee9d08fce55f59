"""ONNX export with a dynamic batch dimension (legacy TorchScript exporter first, torch.export-based one as fallback),
checked with onnx.checker, and verified against eager PyTorch with onnxruntime on the example and a second input."""
from __future__ import annotations

import contextlib
import functools
import io
import logging
import warnings
from pathlib import Path
from typing import Callable, List, Optional

import torch
from torch import nn

from .._inputs import Inputs, run_model, split_inputs
from ..measure.macs import no_mha_fastpath
from .attempts import Method, TryMessages, failure_message, log_other_warnings, tracer_warnings, try_methods
from .base import register_exporter
from .errors import ExportError
from .prepare import batch_axes, export_inputs, input_names, output_names
from .verify import Verification, verify_export

log = logging.getLogger(__name__)

OPSET = 17  # legacy exporter's opset: supported by every onnxruntime >= 1.14
DYNAMO_MIN_OPSET = 18  # the torch.export-based exporter implements opset 18+ only
LARGE_BYTES = 1_500_000_000  # above this (protobuf's 2 GB limit nears) weights go to an external data file

MESSAGES = TryMessages(
    write_failed="ONNX export attempt failed",
    verify_failed="ONNX %(label)s failed verification: %(details)s",
    fallback_used="ONNX export of %(model)s: %(attempts)s; used the %(label)s, which passed verification",
    tracer_warned="ONNX export of %(model)s passed verification on the example and a second input, but tracing warned "
                  "(the file may be wrong for other inputs): %(warnings)s",
)


@register_exporter("onnx")
def export_onnx(model: nn.Module, example_inputs: Inputs, path: Path, *, opset: int = OPSET, dynamic_batch: bool = True,
                dynamo: Optional[bool] = None, check: Optional[Callable[[Path], Verification]] = None) -> Path:
    """Write ``model`` (already finalized, eval mode) to ``path`` as ONNX and run ``onnx.checker`` on it.

    ``dynamo=None`` tries the legacy exporter, then the torch.export-based one; True/False forces one.
    Inputs are named ``input_0...`` (or the dict keys), outputs ``output_0...``; with
    ``dynamic_batch`` their leading dimension is the symbolic ``batch``.

    ``check`` (given by :func:`prunekit.export.export`) verifies each written file; a file that fails it
    (the legacy exporter traces, so it freezes data-dependent branches) makes the next exporter try, and
    when none passes an :class:`ExportError` lists each attempt's measured deviation or error.
    """
    inputs = export_inputs(example_inputs)
    with torch.no_grad():
        outputs = run_model(model, inputs)
    names_in, names_out = input_names(inputs), output_names(outputs)
    axes = batch_axes(inputs, outputs) if dynamic_batch else None
    tries = [False, True] if dynamo is None else [dynamo]
    methods = [Method("dynamo exporter (torch.export)" if use_dynamo else "legacy exporter (tracing)",
                      functools.partial(_write, model, inputs, path, names_in, names_out, axes, opset, use_dynamo))
               for use_dynamo in tries]
    passed, attempts = try_methods(model, path, methods, check, MESSAGES, log)
    if passed:
        return path
    final = getattr(check, "target", None) or path
    if all(a.verification is None for a in attempts):
        raise ExportError(failure_message("onnx", model, final, attempts,
                                          "simplify data-dependent control flow in forward() or export to TorchScript "
                                          "instead; "))
    extra = ""
    if any(a.error and "data-dependent" in a.error for a in attempts):
        extra = ("torch.export cannot capture a Python branch on tensor values either (it raised above); ")
    elif dynamo is False:
        extra = "try dynamo=True (torch.export); "
    raise ExportError(failure_message("onnx", model, final, attempts, extra))


def _write(model, inputs, path, names_in, names_out, axes, opset, use_dynamo) -> List[str]:
    """Export with one exporter and run onnx.checker on the file; returns the TracerWarnings."""
    traced = _torch_export(model, inputs, path, names_in, names_out, axes, opset, use_dynamo)
    _check(path)
    return traced


def _torch_export(model, inputs, path, names_in, names_out, axes, opset, use_dynamo) -> List[str]:
    """Run torch.onnx.export; returns the TracerWarnings it raised (``file:line `code`: message``)."""
    args, kwargs = split_inputs(inputs)
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > LARGE_BYTES
    kw = dict(kwargs=kwargs or None, input_names=names_in, output_names=names_out, dynamic_axes=axes,
              opset_version=opset, dynamo=use_dynamo)
    if use_dynamo:
        kw.update(external_data=big, verbose=False, opset_version=max(opset, DYNAMO_MIN_OPSET))
    captured = io.StringIO()
    # the legacy path warns that it is deprecated (debug log); its TracerWarnings name frozen branches (kept);
    # the dynamo path prints progress lines, and torch.export prints its partial graph to stderr when it fails
    # (the failure is in the ExportError): keep both off the terminal.
    # the fused MultiheadAttention fast path (_native_multi_head_attention) has no ONNX translation: turn it off
    with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(captured), \
            contextlib.redirect_stderr(captured), torch.no_grad(), no_mha_fastpath():
        warnings.simplefilter("always")
        try:
            torch.onnx.export(model, args, str(path), **kw)
        finally:
            if captured.getvalue():
                log.debug("torch.onnx.export output:\n%s", captured.getvalue())
    log_other_warnings(caught)
    return tracer_warnings(caught)


def _check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ExportError(f"the exported ONNX file {path} fails onnx.checker: {exc}") from exc


def verify_onnx(model: nn.Module, example_inputs: Inputs, path: str | Path, atol: float = 1e-4, *,
                rtol: float = 0.0) -> float:
    """Max |ONNX - eager| over all outputs on ``example_inputs`` and on a second, different input (onnxruntime, CPU).

    ``model`` is the eager model (masks allowed: it is evaluated as a finalized eval-mode copy). The second
    input has other values (and another batch size when the file's batch axis is dynamic), so a branch or a
    size frozen by tracing is caught. Raises :class:`ExportError` when the difference exceeds
    ``atol + rtol * max|eager output|``; returns the largest difference otherwise.
    """
    return verify_export(model, example_inputs, path, "onnx", atol=atol, rtol=rtol).max_abs_diff

