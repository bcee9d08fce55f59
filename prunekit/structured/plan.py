"""The pruning plan: a JSON-able record of a structured pruning, and replaying it on a fresh model for loading."""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

from torch import nn

from ..errors import CheckpointError
from .remove import PLAN_VERSION, apply_attributes, apply_keeps, empty_plan

PLAN_ATTR = "_prunekit_plan"


def get_plan(model: nn.Module) -> Optional[Dict[str, Any]]:
    """The plan a structured pruning left on ``model`` (None if it was never structurally pruned)."""
    return getattr(model, PLAN_ATTR, None)


def set_plan(model: nn.Module, plan: Dict[str, Any]) -> None:
    object.__setattr__(model, PLAN_ATTR, plan)


def merge_plans(old: Optional[Dict[str, Any]], new: Dict[str, Any]) -> Dict[str, Any]:
    """Plans of successive prunings are kept as a list of steps replayed in order."""
    if old is None:
        return new
    steps = old.get("steps", [old])
    return {"version": PLAN_VERSION, "steps": steps + new.get("steps", [new])}


def apply_plan(model: nn.Module, plan: Dict[str, Any]) -> nn.Module:
    """Reshape an unpruned instance of the same architecture to the plan's shapes, in place; returns it.

    Parameter values are those of ``model`` sliced (load the pruned state_dict right after).
    """
    if not isinstance(plan, dict) or ("version" not in plan):
        raise CheckpointError("not a prunekit structured plan (missing 'version'); was it produced by prune_structured?")
    for step in plan.get("steps", [plan]):
        _apply_step(model, step)
    set_plan(model, copy.deepcopy(plan))
    return model


def _apply_step(model: nn.Module, step: Dict[str, Any]) -> None:
    from .blocks import replace_blocks
    from .inputs import apply_input_selection

    try:
        apply_keeps(model, {name: entry["keep"] for name, entry in step.get("modules", {}).items()}, empty_plan())
    except (AttributeError, IndexError, RuntimeError) as exc:
        raise CheckpointError(f"the plan does not fit this model ({exc}); build the same architecture it was made on") from exc
    apply_attributes(model, step.get("attributes", []))
    replace_blocks(model, step.get("removed_blocks", []))
    if step.get("input_features"):
        apply_input_selection(model, step["input_features"])
