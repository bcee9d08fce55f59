"""int8 quantization for deployment: onnxruntime (dynamic, or static QDQ from calibration data) or torch dynamic,
and a comparison against the float32 model. onnx / onnxruntime are imported only when used."""
from .api import check_request, quantize
from .compare import Comparison, compare
from .options import BACKENDS, MODES, OPTIONS, Int8Options
from .ort_module import OrtModule

__all__ = ["BACKENDS", "Comparison", "Int8Options", "MODES", "OPTIONS", "OrtModule", "check_request", "compare",
           "quantize"]
