"""Structured pruning: physically remove channels, attention heads, residual blocks or input features.

``prunekit.plan(model, example_inputs, granularity="channel", ...)`` traces the model, groups coupled
channels, scores them and returns a :class:`Plan` (what would go, editable, JSON-able); ``plan.apply(model)``
removes them and records the step (``get_plan``) that ``apply_plan`` replays on a fresh model before
loading pruned weights. ``prunekit.prune`` is plan + apply.
"""
from .api import plan_structured
from .describe import describe_groups
from .handlers import LAYER_HANDLERS, LayerHandler, handler_for, register_handler
from .inputs import InputSelectedLinear
from .plan import apply_plan, get_plan
from .planner import Plan, PlanGroup

__all__ = [
    "InputSelectedLinear", "LAYER_HANDLERS", "LayerHandler", "Plan", "PlanGroup", "apply_plan", "describe_groups",
    "get_plan", "handler_for", "plan_structured", "register_handler",
]
