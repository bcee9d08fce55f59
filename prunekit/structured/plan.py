"""The pruning plan: a JSON-able record of a structured pruning, and replaying it on a fresh model for loading."""
from __future__ import annotations

import copy
from typing import Any, Dict, Optional

import torch
from torch import nn

from ..errors import CheckpointError
from .remove import PLAN_VERSION, apply_attributes, apply_keeps, empty_plan, get_int_attribute

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
    Plans come from files, so every entry is checked against ``model`` before it is applied:
    a layer the model lacks, a layer of another type, a keep index that is negative, repeated
    or out of range, or a malformed entry raises :class:`CheckpointError` naming the layer.
    """
    if not isinstance(plan, dict) or ("version" not in plan):
        raise CheckpointError("not a prunekit structured plan (missing 'version'); was it recorded by prunekit.prune / Plan.apply?")
    steps = plan.get("steps", [plan])
    if not isinstance(steps, list) or not all(isinstance(step, dict) for step in steps):
        raise CheckpointError("the structured plan's 'steps' is not a list of plan steps; the plan is damaged")
    for step in steps:
        _apply_step(model, step)
    set_plan(model, copy.deepcopy(plan))
    return model


def _apply_step(model: nn.Module, step: Dict[str, Any]) -> None:
    from .blocks import replace_blocks
    from .inputs import apply_input_selection

    modules = _entries(step, "modules", dict)
    keeps = {name: _checked_keeps(_layer(model, name, "modules"), name, entry) for name, entry in modules.items()}
    try:
        apply_keeps(model, keeps, empty_plan())  # one call: tied layers are re-tied after all are sliced
    except Exception as exc:  # whatever an entry that passed the checks still makes the slicing code raise
        names = ", ".join(repr(n) for n in list(keeps)[:6])
        raise CheckpointError(f"the plan's layers ({names}) do not fit this model ({type(exc).__name__}: {exc}); "
                              "build the same architecture it was made on") from exc
    for u in _entries(step, "attributes", list):
        if not isinstance(u, dict) or not isinstance(u.get("module"), str) or not isinstance(u.get("attr"), str):
            raise CheckpointError(f"the plan's attribute update {u!r} is malformed (expected module, attr, value)")
        module = _layer(model, u["module"], "attributes")
        current, value = get_int_attribute(module, u["attr"]), u.get("value")
        if u["attr"].startswith("_") or type(current) is not int or type(value) is not int or value < 0:
            raise CheckpointError(
                f"the plan sets {u['attr']!r} of layer {u['module']!r} ({type(module).__name__}) to {value!r}, but that is "
                "not an int attribute of this model's layer (or the value is not a non-negative int); "
                "build the same architecture it was made on"
            )
    apply_attributes(model, step.get("attributes") or [])
    blocks = _entries(step, "removed_blocks", list)
    for name in blocks:
        if not isinstance(name, str) or not name:
            raise CheckpointError(f"the plan removes block {name!r}, which is not a layer name; the plan is damaged")
        _layer(model, name, "removed_blocks")
    replace_blocks(model, blocks)
    entry = step.get("input_features")
    if entry:
        _check_input_selection(model, entry)
        apply_input_selection(model, entry)


def _entries(step: Dict[str, Any], key: str, kind: type):
    value = step.get(key) or kind()
    if not isinstance(value, kind):
        raise CheckpointError(f"the structured plan's {key!r} is a {type(value).__name__}, expected a {kind.__name__}; "
                              "the plan is damaged")
    return value


def _layer(model: nn.Module, name: Any, where: str) -> nn.Module:
    if not isinstance(name, str):
        raise CheckpointError(f"the plan's {where!r} names layer {name!r}, which is not a layer name; the plan is damaged")
    try:
        return model.get_submodule(name) if name else model
    except AttributeError:
        raise CheckpointError(f"the plan's {where!r} names layer {name!r}, which this model does not have: the checkpoint "
                              "was made on another architecture; build the same architecture it was made on") from None


def _checked_keeps(module: nn.Module, name: str, entry: Any) -> Dict[str, Any]:
    """The entry's ``keep`` after checking layer type, kinds and index ranges against ``module``."""
    from .handlers import handler_for

    label = f"layer {name!r} ({type(module).__name__})"
    if not isinstance(entry, dict) or not isinstance(entry.get("keep"), dict):
        raise CheckpointError(f"the plan's entry for {label} has no 'keep' mapping; the plan is damaged")
    saved_type = entry.get("type")
    if saved_type is not None and saved_type != type(module).__name__:
        raise CheckpointError(f"the plan's {name!r} is a {saved_type} but this model's {label} is not: the checkpoint "
                              "was made on another architecture; build the same architecture it was made on")
    handler = handler_for(module)
    for kind, positions in entry["keep"].items():
        if not isinstance(kind, str):
            raise CheckpointError(f"the plan's keep kind {kind!r} of {label} is not a string; the plan is damaged")
        if (not isinstance(positions, list)
                or not all(type(i) is int for i in positions)
                or any(b <= a for a, b in zip(positions, positions[1:]))
                or (positions and positions[0] < 0)):
            raise CheckpointError(f"the plan's keep list {kind!r} of {label} is not increasing non-negative integers; "
                                  "the plan is damaged")
        if handler is None and not kind.startswith("param:"):
            raise CheckpointError(f"the plan slices {kind!r} of {label}, a layer type prunekit cannot slice: the checkpoint "
                                  "was made on another architecture; build the same architecture it was made on")
        bound = _kind_size(module, kind, handler)
        if bound is not None and positions and positions[-1] >= bound:
            raise CheckpointError(f"the plan keeps index {positions[-1]} of {kind!r} in {label}, which has only {bound}: "
                                  "the checkpoint was made on another architecture or the plan is damaged")
    return entry["keep"]


def _kind_size(module: nn.Module, kind: str, handler) -> Optional[int]:
    """How many positions ``kind`` has in ``module`` (None when the handler does not say)."""
    if kind.startswith("param:"):
        parts = kind.split(":")
        if len(parts) != 3 or not parts[2].isdigit():
            raise CheckpointError(f"the plan's keep kind {kind!r} is malformed (expected 'param:<name>:<dim>')")
        t = getattr(module, parts[1], None)
        if not isinstance(t, torch.Tensor) or int(parts[2]) >= t.dim():
            raise CheckpointError(f"the plan slices {kind!r} of layer {type(module).__name__}, which has no such tensor dim: "
                                  "the checkpoint was made on another architecture")
        return int(t.shape[int(parts[2])])
    sizes = []
    for path, dim, imap in handler.param_slices(module, kind) if handler is not None else []:
        if imap is not None:
            sizes.append(int(imap.shape[0]))
            continue
        owner_path, _, attr = path.rpartition(".")
        owner = module.get_submodule(owner_path) if owner_path else module
        t = getattr(owner, attr, None)
        if isinstance(t, torch.Tensor) and dim < t.dim():
            sizes.append(int(t.shape[dim]))
    return min(sizes) if sizes else None


def _check_input_selection(model: nn.Module, entry: Any) -> None:
    if not isinstance(entry, dict) or not isinstance(entry.get("module"), str) or not isinstance(entry.get("keep"), list):
        raise CheckpointError(f"the plan's input_features entry {entry!r} is malformed (expected module, keep)")
    name, keep = entry["module"], entry["keep"]
    layer = _layer(model, name, "input_features")
    if not isinstance(layer, nn.Linear):
        raise CheckpointError(f"the plan selects input features of layer {name!r}, but this model's {name!r} is a "
                              f"{type(layer).__name__}, not a Linear: build the same architecture it was made on")
    if (not all(type(i) is int for i in keep) or any(b <= a for a, b in zip(keep, keep[1:]))
            or (keep and (keep[0] < 0 or keep[-1] >= layer.in_features))):
        raise CheckpointError(f"the plan's input_features keep list of layer {name!r} is not increasing indices in "
                              f"[0, {layer.in_features}): the checkpoint was made on another architecture or the plan is damaged")
