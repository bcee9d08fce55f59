"""ONNX export with a dynamic batch dimension (legacy TorchScript exporter first, torch.export-based one as fallback),
checked with onnx.checker, and verified against eager PyTorch with onnxruntime on the example and a second input."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np
import torch
from torch import nn

from .._inputs import Inputs, run_model, split_inputs
from ..measure.macs import no_mha_fastpath
from .base import register_exporter
from .errors import ExportError
from .prepare import batch_axes, export_inputs, input_names, output_names
from .verify import (Attempt, Verification, _short, failure_message, log_other_warnings, register_runner, tracer_warnings,
                     verify_export)

log = logging.getLogger(__name__)

OPSET = 17  # legacy exporter's opset: supported by every onnxruntime >= 1.14
DYNAMO_MIN_OPSET = 18  # the torch.export-based exporter implements opset 18+ only
LARGE_BYTES = 1_500_000_000  # above this (protobuf's 2 GB limit nears) weights go to an external data file


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
    attempts: List[Attempt] = []
    for use_dynamo in tries:
        method = "dynamo exporter (torch.export)" if use_dynamo else "legacy exporter (tracing)"
        try:
            traced = _torch_export(model, inputs, path, names_in, names_out, axes, opset, use_dynamo)
            _check(path)
        except Exception as exc:  # each exporter fails in its own way; keep the messages for the user
            attempts.append(Attempt(method, error=_short(exc)))
            log.debug("ONNX export attempt failed", exc_info=True)
            continue
        verification = check(path) if check is not None else None
        if verification is not None and not verification.ok:
            attempts.append(Attempt(method, verification=verification, tracer_warnings=traced))
            log.debug("ONNX %s failed verification: %s", method, verification.describe())
            continue
        if attempts:
            log.warning("ONNX export of %s: %s; used the %s, which passed verification",
                        type(model).__name__, " ".join(a.describe() for a in attempts), method)
        if traced:
            log.warning("ONNX export of %s passed verification on the example and a second input, but tracing warned "
                        "(the file may be wrong for other inputs): %s", type(model).__name__, " | ".join(traced))
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


class _OrtRunner:
    """An onnxruntime CPU session fed by name from inputs shaped like the example inputs."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 4  # failures are reported in the ExportError, not logged to stderr
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = 4
        self.inputs = self.session.get_inputs()
        self.dynamic_batch = all(not isinstance(i.shape[0], int) for i in self.inputs if len(i.shape) > 0)

    def __call__(self, inputs: Inputs) -> List[torch.Tensor]:
        args, kwargs = split_inputs(inputs)
        values = list(args) + list(kwargs.values())
        names = input_names(inputs)
        feeds = {}
        for inp in self.inputs:
            if inp.name not in names:
                raise ExportError(f"ONNX input {inp.name!r} has no matching example input; example inputs are {names}")
            feeds[inp.name] = values[names.index(inp.name)].detach().cpu().numpy()
        return [torch.from_numpy(np.asarray(o)) for o in self.session.run(None, feeds, self.run_options)]


@register_runner("onnx", atol=1e-4, rtol=1e-4)
def _load_onnx(path: Path, device: torch.device) -> _OrtRunner:
    return _OrtRunner(path)
