"""Export a (pruned) model to ONNX or TorchScript with its effective weights; exporters are a registry."""
from . import onnx as _onnx  # noqa: F401  (registers "onnx")
from . import torchscript as _torchscript  # noqa: F401  (registers "torchscript")
from .base import EXPORTERS, export, register_exporter
from .errors import ExportError
from .onnx import verify_onnx
from .prepare import finalized_copy
from .torchscript import verify_torchscript

__all__ = ["EXPORTERS", "ExportError", "export", "finalized_copy", "register_exporter", "verify_onnx", "verify_torchscript"]
