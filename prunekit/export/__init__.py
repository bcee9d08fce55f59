"""Export a (pruned) model to ONNX or TorchScript with its effective weights, verified on two inputs; exporters are a registry."""
from . import onnx as _onnx  # noqa: F401  (registers "onnx")
from . import torchscript as _torchscript  # noqa: F401  (registers "torchscript")
from .base import EXPORTERS, ExportResult, export, export_verified, register_exporter
from .errors import ExportError
from .onnx import verify_onnx
from .prepare import finalized_copy
from .torchscript import verify_torchscript
from .runners import RUNNERS, register_runner
from .second_input import different_inputs
from .verify import Verification, verify_export

__all__ = ["EXPORTERS", "ExportError", "ExportResult", "RUNNERS", "Verification", "different_inputs", "export",
           "export_verified", "finalized_copy", "register_exporter", "register_runner", "verify_export", "verify_onnx",
           "verify_torchscript"]
