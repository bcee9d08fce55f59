"""The onnxruntime backend: verified float32 ONNX export, optional pre-processing, then quantize_dynamic or
quantize_static (QDQ, per-channel weights, activation ranges from the user's calibration batches)."""
from __future__ import annotations

import contextlib
import io
import logging
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Iterable, Iterator, List, Optional, Tuple

import torch
from torch import nn

from .._inputs import Inputs, split_inputs
from ..errors import ConfigError
from .batches import iter_batches
from .options import STATIC_NEEDS_CALIBRATION, Int8Options
from .ort_module import OrtModule

log = logging.getLogger(__name__)

DEFAULT_CALIBRATION_BATCHES = 16
FLOAT_NAME, PRE_NAME, INT8_NAME = "model.float32.onnx", "model.pre.onnx", "model.int8.onnx"


def quantize_onnx(model: nn.Module, example_inputs: Inputs, mode: str, calibration: Optional[Iterable],
                  path: Optional[Path], opts: Int8Options) -> OrtModule:
    """Export ``model`` (masks folded in), quantize the file, load it; ``path`` also receives the int8 file."""
    _require_onnxruntime()
    workdir = Path(tempfile.mkdtemp(prefix="prunekit-int8-"))
    try:
        source = export_float(model, example_inputs, workdir / FLOAT_NAME, opts)
        steps = {"preprocess": "off (preprocess=False)"}
        if opts.preprocess is not False:
            source, steps["preprocess"] = preprocess(source, workdir / PRE_NAME)
        target = workdir / INT8_NAME
        with _ort_output_to_log():
            if mode == "dynamic":
                _quantize_dynamic(source, target, opts)
            else:
                _quantize_static(source, target, calibration, opts, n_inputs=len(_flat_inputs(example_inputs)))
        float_bytes = (workdir / FLOAT_NAME).stat().st_size
        _drop_intermediates(workdir, target)
        session = {"flush_denormals": opts.flush_denormals is not False,
                   "disabled_optimizers": opts.disabled_optimizers}
        if path is None:
            return _finish(OrtModule(target, temp_dir=workdir, **session), float_bytes, mode, steps)
        from ..io.atomic import atomic_write

        final = atomic_write(path, lambda tmp: shutil.copyfile(target, tmp), what="int8 ONNX model")
        shutil.rmtree(workdir, ignore_errors=True)
        return _finish(OrtModule(final, **session), float_bytes, mode, steps)
    except BaseException:
        shutil.rmtree(workdir, ignore_errors=True)
        raise


def _finish(module: OrtModule, float_bytes: int, mode: str, steps: dict) -> OrtModule:
    module.float_bytes = float_bytes  # size of the verified float32 export it was made from (reports show the ratio)
    module.applied = {"mode": mode, **steps, **module.applied}  # what quantize did, then the session's settings
    return module


def export_float(model: nn.Module, example_inputs: Inputs, path: Path, opts: Int8Options) -> Path:
    """prunekit's verified ONNX export (finalized copy: pruning masks folded into plain weights, dynamic batch)."""
    from ..export import export

    kw = {"opset": opts.opset} if opts.opset is not None else {}
    return export(model, example_inputs, path, "onnx", **kw)


def preprocess(source: Path, target: Path) -> Tuple[Path, str]:
    """onnxruntime's ``quant_pre_process`` (symbolic shape inference, graph optimisation); the plain file on failure.

    Shape inference lets the quantizer see every tensor's type; when it fails (an op it does not know, a symbolic
    shape it cannot merge) quantizing the exported file still works, only less may be quantized. Returns the file
    to quantize and what was done (``OrtModule.applied["preprocess"]``), a fallback included.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    errors = []
    for skip_symbolic in (False, True):  # symbolic shape inference fails on some graphs; onnx's own then may not
        try:
            with _ort_output_to_log():
                quant_pre_process(str(source), str(target), skip_symbolic_shape=skip_symbolic, auto_merge=True)
            break
        except Exception as exc:  # onnxruntime raises anything from shape inference: the export stays usable
            errors.append(f"{type(exc).__name__}: {exc}".rstrip(": "))
    else:
        log.info("int8: onnxruntime's quant_pre_process failed (%s); quantizing the exported file as it is",
                 "; ".join(errors))
        return source, f"failed, quantized the plain export ({'; '.join(errors)})"
    if not target.is_file():
        return source, "quant_pre_process wrote no file, quantized the plain export"
    if errors:
        log.debug("int8: symbolic shape inference failed (%s); pre-processed with onnx shape inference", errors[0])
        return target, f"quant_pre_process with onnx shape inference (symbolic shape inference failed: {errors[0]})"
    return target, "quant_pre_process"


def _quantize_dynamic(source: Path, target: Path, opts: Int8Options) -> None:
    from onnxruntime.quantization import quantize_dynamic

    quantize_dynamic(str(source), str(target), per_channel=opts.per_channel is not False,
                     reduce_range=bool(opts.reduce_range), weight_type=_qtype(opts.weight_type),
                     op_types_to_quantize=opts.op_types, nodes_to_exclude=opts.exclude_nodes)


def _quantize_static(source: Path, target: Path, calibration: Optional[Iterable], opts: Int8Options,
                     n_inputs: int) -> None:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, quantize_static

    if calibration is None:
        raise ConfigError(STATIC_NEEDS_CALIBRATION)
    reader = CalibrationReader(source, calibration, n_inputs,
                               opts.calibration_batches or DEFAULT_CALIBRATION_BATCHES)
    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[opts.calibrate_method or "minmax"]
    quantize_static(str(source), str(target), reader, quant_format=QuantFormat.QDQ,
                    per_channel=opts.per_channel is not False, reduce_range=bool(opts.reduce_range),
                    activation_type=_qtype(opts.activation_type or "uint8"), weight_type=_qtype(opts.weight_type),
                    op_types_to_quantize=opts.op_types, nodes_to_exclude=opts.exclude_nodes, calibrate_method=method)
    if reader.batches_read == 0:
        raise ConfigError("the calibration iterable yielded no batch; pass at least one batch of training inputs")


def CalibrationReader(model_path: Path, calibration: Iterable, n_inputs: int, limit: int):
    """An onnxruntime ``CalibrationDataReader`` over the user's batches (inputs only, numpy: floats as float32, fed
    by input name, at most ``limit`` batches); built here so that importing prunekit.int8 does not import
    onnxruntime."""
    from onnxruntime.quantization import CalibrationDataReader

    reader = type("CalibrationReader", (_CalibrationReader, CalibrationDataReader), {})
    return reader(model_path, calibration, n_inputs, limit)


class _CalibrationReader:
    def __init__(self, model_path: Path, calibration: Iterable, n_inputs: int, limit: int):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 3
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
        self.names = [i.name for i in session.get_inputs()]
        self._batches: Iterator = iter_batches(calibration, n_inputs, limit)
        self.batches_read = 0
        self.samples_read = 0

    def get_next(self):
        item = next(self._batches, None)
        if item is None:
            return None
        values = _flat_inputs(item[0])
        if len(values) != len(self.names):
            raise ConfigError(f"a calibration batch holds {len(values)} input tensors, the model takes "
                              f"{len(self.names)} ({self.names})")
        self.batches_read += 1
        self.samples_read += int(values[0].shape[0]) if values and values[0].dim() else 1
        return {name: _feed(v) for name, v in zip(self.names, values)}


def _feed(value: torch.Tensor):
    """A calibration input as the exported file takes it: floating point as float32, integers (token ids, attention
    masks) and booleans as they are."""
    value = value.detach().cpu()
    return (value.float() if value.is_floating_point() else value).numpy()


def _flat_inputs(inputs: Inputs) -> List[torch.Tensor]:
    args, kwargs = split_inputs(inputs)
    return [t for t in list(args) + list(kwargs.values())]


def _qtype(name: Optional[str]):
    from onnxruntime.quantization import QuantType

    return QuantType.QUInt8 if name == "uint8" else QuantType.QInt8


def _drop_intermediates(workdir: Path, keep: Path) -> None:
    for p in workdir.iterdir():
        if p.resolve() != keep.resolve():
            shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)


def _require_onnxruntime() -> None:
    try:
        import onnxruntime  # noqa: F401
        import onnxruntime.quantization  # noqa: F401
    except ImportError as exc:
        raise ConfigError(f"backend='onnxruntime' needs onnxruntime ({exc}); pip install onnxruntime onnx, or use "
                          "backend='torch' (dynamic int8 of Linear layers)") from exc


class _Divert(logging.Filter):
    """Passes on records of other code; onnxruntime's go to prunekit's logger at debug level."""

    def filter(self, record: logging.LogRecord) -> bool:
        if "onnxruntime" not in record.pathname:
            return True
        log.debug("onnxruntime: %s", record.getMessage())
        return False


@contextlib.contextmanager
def _ort_output_to_log():
    """onnxruntime's quantizer logs hints ("please run pre-processing first") through the root logger, prints, and
    warns: keep all of it off the user's terminal (at debug level in ours), without touching other code's output.

    ``logging.warning()`` on a root logger without handlers would install a stderr handler (basicConfig); a
    NullHandler stands in for the duration so the user's logging configuration is left as it was."""
    root = logging.getLogger()
    divert, null = _Divert(), logging.NullHandler()
    bare = not root.handlers
    captured = io.StringIO()
    root.addFilter(divert)
    if bare:
        root.addHandler(null)
    try:
        with warnings.catch_warnings(record=True) as caught, contextlib.redirect_stdout(captured):
            warnings.simplefilter("always")
            yield
    finally:
        root.removeFilter(divert)
        if bare:
            root.removeHandler(null)
    for w in caught:
        if "onnxruntime" in str(w.filename) or "onnx" in str(w.filename):
            log.debug("onnxruntime warned: %s", w.message)
        else:  # not ours to hide
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    if captured.getvalue():
        log.debug("onnxruntime output:\n%s", captured.getvalue())
