"""Layer handlers: the table from layer type to how channels flow through it and how it is sliced."""
from .base import LAYER_HANDLERS, LayerHandler, handler_for, register_handler, slice_tensor
from . import conv, linear, norm, passthrough, attention  # noqa: F401,E402  (fill the table)

__all__ = ["LAYER_HANDLERS", "LayerHandler", "handler_for", "register_handler", "slice_tensor"]
