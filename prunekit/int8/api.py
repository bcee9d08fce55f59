"""``quantize``: one call from a float32 model to a runnable int8 one, checked before any work is done."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Optional

from torch import nn

from .._inputs import Inputs
from ..errors import ConfigError
from .options import STATIC_NEEDS_CALIBRATION, Int8Options, check_route, make_options


def check_request(mode: str = "dynamic", backend: str = "onnxruntime", *, calibration: Optional[Iterable] = None,
                  path=None, require_calibration: bool = True, **options) -> Int8Options:
    """Validate a :func:`quantize` request without running anything; returns its options.

    Unknown options, options the (backend, mode) does not use, bad values, static without calibration
    (unless ``require_calibration=False``: a recipe supplies training batches itself), ``path`` with the torch
    backend, and a missing onnxruntime are :class:`ConfigError`\\ s.
    """
    route = check_route(mode, backend)
    opts = make_options(route, options)
    if mode == "static" and calibration is None and require_calibration:
        raise ConfigError(STATIC_NEEDS_CALIBRATION)
    if backend == "torch" and path is not None:
        raise ConfigError("path= writes an .onnx file, which backend='onnxruntime' makes; the torch backend returns a "
                          "torch module: save its state_dict with torch.save, or use backend='onnxruntime'")
    if path is not None and Path(path).is_dir():
        raise ConfigError(f"path {str(path)!r} is a folder; pass a file path such as {Path(path) / 'model.int8.onnx'}")
    if backend == "onnxruntime":
        from .ort import _require_onnxruntime

        _require_onnxruntime()
    return opts


def quantize(model: nn.Module, example_inputs: Inputs, *, mode: str = "dynamic", calibration: Optional[Iterable] = None,
             backend: str = "onnxruntime", path=None, **options) -> Any:
    """int8 ``model``: weights stored as int8, integer kernels where the backend has them.

    * ``backend="onnxruntime"`` (default): ``model`` is exported with prunekit's verified ONNX exporter (pruning
      masks folded in, dynamic batch), pre-processed (``quant_pre_process``) and quantized. ``mode="dynamic"``:
      int8 weights, activations quantized at run time (Linear / MatMul-heavy models, transformers).
      ``mode="static"``: QDQ format with per-channel weights and activation ranges measured on ``calibration``
      (training batches: an iterable of ``(inputs, targets)`` or of input tensors; ``calibration_batches`` are
      read) — best for CNNs. Returns an :class:`~prunekit.int8.OrtModule` (``qmodel(x) -> torch.Tensor``,
      ``.path``, ``.session``); ``path`` also writes the int8 .onnx there (atomically), otherwise it lives in a
      temporary file removed with the module.
    * ``backend="torch"``: dynamic int8 of Linear (``layer_types``) layers; returns a torch module.

    ``options`` (see :data:`prunekit.int8.OPTIONS` for which apply where): per_channel, reduce_range, weight_type,
    activation_type, calibrate_method, calibration_batches, op_types, exclude_nodes, preprocess, opset,
    flush_denormals, disabled_optimizers, layer_types. An unknown or inapplicable option is a :class:`ConfigError`.
    The OrtModule's ``applied`` dict records what was done (pre-processing or its fallback, the session's
    settings). Check the result against the float model with :func:`prunekit.int8.compare`.
    """
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    opts = check_request(mode, backend, calibration=calibration, path=path, **options)
    if backend == "torch":
        from .torch_backend import quantize_torch

        return quantize_torch(model, example_inputs, opts)
    from .ort import quantize_onnx

    return quantize_onnx(model, example_inputs, mode, calibration, Path(path) if path is not None else None, opts)
