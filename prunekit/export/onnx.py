"""ONNX export with a dynamic batch dimension (legacy TorchScript exporter first, torch.export-based one as fallback),
checked with onnx.checker, and verified against eager PyTorch with onnxruntime."""
from __future__ import annotations

import contextlib
import io
import logging
import warnings
from pathlib import Path
from typing import Optional

import torch
from torch import nn

from .._inputs import Inputs, run_model, split_inputs, to_device
from ..measure.macs import no_mha_fastpath
from .base import register_exporter
from .errors import ExportError
from .prepare import batch_axes, export_inputs, finalized_copy, flat_outputs, input_names, max_abs_diff, output_names

log = logging.getLogger(__name__)

OPSET = 17  # legacy exporter's opset: supported by every onnxruntime >= 1.14
DYNAMO_MIN_OPSET = 18  # the torch.export-based exporter implements opset 18+ only
LARGE_BYTES = 1_500_000_000  # above this (protobuf's 2 GB limit nears) weights go to an external data file


@register_exporter("onnx")
def export_onnx(model: nn.Module, example_inputs: Inputs, path: Path, *, opset: int = OPSET, dynamic_batch: bool = True,
                dynamo: Optional[bool] = None) -> Path:
    """Write ``model`` (already finalized, eval mode) to ``path`` as ONNX and run ``onnx.checker`` on it.

    ``dynamo=None`` tries the legacy exporter, then the torch.export-based one; True/False forces one.
    Inputs are named ``input_0...`` (or the dict keys), outputs ``output_0...``; with
    ``dynamic_batch`` their leading dimension is the symbolic ``batch``.
    """
    inputs = export_inputs(example_inputs)
    with torch.no_grad():
        outputs = run_model(model, inputs)
    names_in, names_out = input_names(inputs), output_names(outputs)
    axes = batch_axes(inputs, outputs) if dynamic_batch else None
    tries = [False, True] if dynamo is None else [dynamo]
    errors = []
    for use_dynamo in tries:
        try:
            _torch_export(model, inputs, path, names_in, names_out, axes, opset, use_dynamo)
            break
        except Exception as exc:  # each exporter fails in its own way; keep the messages for the user
            errors.append(f"{'dynamo' if use_dynamo else 'legacy'} exporter: {type(exc).__name__}: {exc}")
            log.debug("ONNX export attempt failed", exc_info=True)
    else:
        raise ExportError(f"could not export {type(model).__name__} to ONNX. " + " | ".join(errors)
                          + ". Simplify data-dependent control flow in forward() or export to TorchScript instead.")
    _check(path)
    return path


def _torch_export(model, inputs, path, names_in, names_out, axes, opset, use_dynamo) -> None:
    args, kwargs = split_inputs(inputs)
    big = sum(p.numel() * p.element_size() for p in model.parameters()) > LARGE_BYTES
    kw = dict(kwargs=kwargs or None, input_names=names_in, output_names=names_out, dynamic_axes=axes,
              opset_version=opset, dynamo=use_dynamo)
    if use_dynamo:
        kw.update(external_data=big, verbose=False, opset_version=max(opset, DYNAMO_MIN_OPSET))
    captured = io.StringIO()
    # the legacy path warns that it is deprecated; the dynamo path prints progress lines: keep both off the terminal
    # the fused MultiheadAttention fast path (_native_multi_head_attention) has no ONNX translation: turn it off
    with warnings.catch_warnings(), contextlib.redirect_stdout(captured), torch.no_grad(), no_mha_fastpath():
        warnings.simplefilter("ignore")
        torch.onnx.export(model, args, str(path), **kw)
    if captured.getvalue():
        log.debug("torch.onnx.export output:\n%s", captured.getvalue())


def _check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except Exception as exc:
        raise ExportError(f"the exported ONNX file {path} fails onnx.checker: {exc}") from exc


def verify_onnx(model: nn.Module, example_inputs: Inputs, path: str | Path, atol: float = 1e-4) -> float:
    """Max |ONNX - eager| over all outputs on ``example_inputs`` (run with onnxruntime on CPU).

    ``model`` is the eager model (masks allowed: it is evaluated as a finalized eval-mode copy).
    Raises :class:`ExportError` when the difference exceeds ``atol``; returns it otherwise.
    """
    import onnxruntime as ort

    clone = finalized_copy(model)
    with torch.no_grad():
        expected = flat_outputs(run_model(clone, to_device(example_inputs, _device(clone))))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    args, kwargs = split_inputs(example_inputs)
    values = list(args) + list(kwargs.values())
    names = input_names(example_inputs)
    feeds = {}
    for inp in session.get_inputs():
        if inp.name not in names:
            raise ExportError(f"ONNX input {inp.name!r} has no matching example input; example inputs are {names}")
        feeds[inp.name] = values[names.index(inp.name)].detach().cpu().numpy()
    got = session.run(None, feeds)
    diff = max_abs_diff(expected, got)
    if diff > atol:
        raise ExportError(f"ONNX model {path} differs from eager PyTorch by {diff:.3g} (> atol {atol:g}) on inputs "
                          "of the given shape; check ops with different ONNX semantics or export with opset >= 17")
    return diff


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    return p.device if p is not None else torch.device("cpu")
