"""Structured pruning: physically remove channels, attention heads, residual blocks or input features.

``prune_structured(model, example_inputs, ...)`` traces the model, groups coupled channels,
scores them with a criterion, removes the chosen ones and records a plan (``get_plan``) that
``apply_plan`` replays on a fresh model before loading pruned weights.
"""
from .api import StructuredConfig, prune_structured
from .describe import describe_groups
from .handlers import LAYER_HANDLERS, LayerHandler, handler_for, register_handler
from .inputs import InputSelectedLinear
from .plan import apply_plan, get_plan

__all__ = [
    "InputSelectedLinear", "LAYER_HANDLERS", "LayerHandler", "StructuredConfig", "apply_plan", "describe_groups",
    "get_plan", "handler_for", "prune_structured", "register_handler",
]
