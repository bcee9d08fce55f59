"""What an int8 request may say: the modes, the backends, and which option applies to which (backend, mode)."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Dict, FrozenSet, List, Literal, Optional, Tuple

from ..errors import ConfigError

MODES = ("dynamic", "static")
BACKENDS = ("onnxruntime", "torch")
Route = Tuple[str, str]  # (backend, mode)

ORT_DYNAMIC, ORT_STATIC, TORCH_DYNAMIC = ("onnxruntime", "dynamic"), ("onnxruntime", "static"), ("torch", "dynamic")
ORT = frozenset({ORT_DYNAMIC, ORT_STATIC})
TORCH_LAYER_TYPES = ("Linear", "LSTM", "GRU")  # what torch's dynamic quantization replaces
STATIC_NEEDS_CALIBRATION = ("mode='static' needs calibration batches to fix the activation ranges: pass "
                            "calibration=<training batches> (a DataLoader of (inputs, targets), or a list of input "
                            "tensors), or use mode='dynamic'")


def _opt(default, used_by: FrozenSet[Route], doc: str):
    return field(default=default, metadata={"used_by": used_by, "doc": doc})


@dataclass(frozen=True)
class Int8Options:
    """Backend options of :func:`prunekit.int8.quantize`; ``None`` means "the backend's default" (see each doc)."""

    per_channel: Optional[bool] = _opt(None, ORT, "one scale per output channel of each weight; None: True (one scale "
                                                  "per tensor cost all-MiniLM-L6-v2 0.03 of embedding cosine)")
    reduce_range: Optional[bool] = _opt(None, ORT, "7-bit weights, for x86 CPUs without VNNI where int8 products "
                                                   "can saturate; None: False")
    weight_type: Optional[Literal["int8", "uint8"]] = _opt(None, ORT, "weight integer type; None: int8")
    activation_type: Optional[Literal["int8", "uint8"]] = _opt(None, frozenset({ORT_STATIC}),
                                                               "activation integer type; None: uint8 (U8S8, "
                                                               "the fast path of onnxruntime's x86 int8 kernels)")
    calibrate_method: Optional[Literal["minmax", "entropy", "percentile"]] = _opt(
        None, frozenset({ORT_STATIC}), "how activation ranges are chosen from the calibration batches; None: minmax")
    calibration_batches: Optional[int] = _opt(None, frozenset({ORT_STATIC}),
                                              "most calibration batches read; None: 16")
    op_types: Optional[List[str]] = _opt(None, ORT, "ONNX op types to quantize (e.g. [Conv, MatMul, Gemm]); None: "
                                                    "every op type onnxruntime quantizes")
    exclude_nodes: Optional[List[str]] = _opt(None, ORT, "ONNX node names kept in float32")
    preprocess: Optional[bool] = _opt(None, ORT, "run onnxruntime's quant_pre_process (shape inference, graph "
                                                 "optimisation) first; a failure falls back to the plain export; "
                                                 "None: True")
    opset: Optional[int] = _opt(None, ORT, "ONNX opset of the float32 export; None: prunekit.export's default (17)")
    flush_denormals: Optional[bool] = _opt(None, ORT, "the returned OrtModule runs with denormal floats flushed to "
                                                      "zero (FTZ/DAZ on the calling thread during each call, "
                                                      "onnxruntime's session.set_denormal_as_zero on its pool "
                                                      "threads): a masked attention's Softmax (scores of -inf) makes "
                                                      "exp() return denormals, which ran all-MiniLM-L6-v2's Softmax "
                                                      "about 10x slower; None: True")
    disabled_optimizers: Optional[List[str]] = _opt(
        None, ORT, "onnxruntime graph optimizers the returned OrtModule's session leaves out (onnxruntime's names; it "
                   "ignores unknown ones); None: [SkipLayerNormFusion] (onnxruntime 1.32's CPU SkipLayerNormalization "
                   "measured about 5x slower than the Add + LayerNormalization it fuses); [] keeps every fusion")
    layer_types: Optional[List[str]] = _opt(None, frozenset({TORCH_DYNAMIC}),
                                            f"torch layer types replaced by int8 ones, of {list(TORCH_LAYER_TYPES)}; "
                                            "None: [Linear]")

    def validate(self) -> "Int8Options":
        if self.calibration_batches is not None and (not isinstance(self.calibration_batches, int)
                                                     or self.calibration_batches < 1):
            raise ConfigError(f"calibration_batches must be a positive integer, got {self.calibration_batches!r}")
        for key, allowed in (("weight_type", ("int8", "uint8")), ("activation_type", ("int8", "uint8")),
                             ("calibrate_method", ("minmax", "entropy", "percentile"))):
            value = getattr(self, key)
            if value is not None and value not in allowed:
                raise ConfigError(f"{key} must be one of {list(allowed)}, got {value!r}")
        for key in ("preprocess", "flush_denormals"):
            value = getattr(self, key)
            if value is not None and not isinstance(value, bool):
                raise ConfigError(f"{key} must be True or False, got {value!r}")
        for key in ("op_types", "exclude_nodes", "layer_types", "disabled_optimizers"):
            value = getattr(self, key)
            if value is not None and (isinstance(value, str) or not all(isinstance(v, str) for v in value)):
                raise ConfigError(f"{key} must be a list of names, got {value!r}")
        bad = [t for t in self.layer_types or () if t not in TORCH_LAYER_TYPES]
        if bad:
            raise ConfigError(f"layer_types {bad} cannot be quantized by torch's dynamic int8; choose from "
                              f"{list(TORCH_LAYER_TYPES)} (convolutions: backend='onnxruntime')")
        return self

    def given(self) -> Dict[str, object]:
        """The options that were set (not None)."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if getattr(self, f.name) is not None}


FIELDS = {f.name: f for f in dataclasses.fields(Int8Options)}
OPTIONS: Dict[Route, Tuple[str, ...]] = {
    route: tuple(name for name, f in FIELDS.items() if route in f.metadata["used_by"])
    for route in (ORT_DYNAMIC, ORT_STATIC, TORCH_DYNAMIC)
}


def check_route(mode: str, backend: str) -> Route:
    if mode not in MODES:
        raise ConfigError(f"mode must be one of {list(MODES)}, got {mode!r}: dynamic quantizes weights and "
                          "activations at run time; static also fixes activation ranges from calibration data")
    if backend not in BACKENDS:
        raise ConfigError(f"backend must be one of {list(BACKENDS)}, got {backend!r}")
    if (backend, mode) == ("torch", "static"):
        raise ConfigError("mode='static' with backend='torch' is not supported: torch's static int8 (FX / PT2E) only "
                          "runs faster once compiled with inductor, and its eager modules are deprecated; use "
                          "backend='onnxruntime' (static QDQ, per-channel weights) instead")
    return backend, mode


def make_options(route: Route, options: dict) -> Int8Options:
    """Int8Options from keyword options: an unknown name, or one the route does not use, is a ConfigError."""
    backend, mode = route
    allowed = OPTIONS[route]
    for name in options:
        if name not in FIELDS:
            raise ConfigError(f"unknown int8 option {name!r} for backend={backend!r}, mode={mode!r}; allowed options: "
                              f"{', '.join(allowed)}")
        if name not in allowed and options[name] is not None:
            where = sorted(f"backend={b!r} mode={m!r}" for b, m in FIELDS[name].metadata["used_by"])
            raise ConfigError(f"int8 option {name!r} does not apply to backend={backend!r}, mode={mode!r} (it applies "
                              f"to {'; '.join(where)}); allowed options here: {', '.join(allowed)}")
    return Int8Options(**options).validate()
