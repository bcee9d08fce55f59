"""describe_groups: each dependency group, its members, and what is left out and why (``prunekit inspect``)."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence, Tuple

from torch import nn

from ..graph.groups import build_graph
from ..match import as_patterns, check_patterns
from .handlers import handler_for


def member_rows(model: nn.Module, group) -> List[Tuple[str, str, str, int]]:
    """``(module, layer type, axis kind, positions in this group)`` for every member of ``group``."""
    rows = []
    for member in group.members:
        mod = model.get_submodule(member.axis.module) if member.axis.module else model
        rows.append((member.axis.module, type(mod).__name__, member.axis.kind, int(len(member.positions))))
    return rows


def describe_groups(model: nn.Module, example_inputs, ignore=None, leaf_modules: Sequence[Any] = (),
                    tracer: str = "auto", freeze=None) -> List[Dict[str, Any]]:
    """One dict per group: ``members`` [(module, type, dim, n channels)], ``channels``, ``prunable``, ``left_out``
    [(module, reason)]; a last entry with ``kind='opaque'`` lists layers no channel can flow through.

    An ignore / freeze pattern that matches no module raises :class:`~prunekit.errors.PruningError`; a
    selection that leaves nothing prunable does not (the groups then say why they are left out)."""
    from types import SimpleNamespace

    from ..api import run_once
    from .api import mark_selection

    ignore, freeze = as_patterns(ignore, "ignore"), as_patterns(freeze, "freeze")
    check_patterns(model, "ignore", ignore)  # a typo is an error here too
    check_patterns(model, "freeze", freeze)
    run_once(model, example_inputs)  # wrong example inputs: InputError naming their shapes, not a trace dump
    graph = build_graph(model, example_inputs, tuple(as_patterns(leaf_modules, "leaf_modules")), tracer,
                        module_rule=handler_for)
    if ignore or freeze:
        # a selection that leaves no prunable group is still described (every group shows why it is left out)
        mark_selection(graph, model, SimpleNamespace(ignore=ignore, freeze=freeze), allow_empty=True)
    out = []
    for g in graph.groups:
        members, left = [], []
        for member in g.members:
            mod = model.get_submodule(member.axis.module) if member.axis.module else model
            members.append((member.axis.module, type(mod).__name__, _dim(mod, member.axis.kind), int(len(member.positions))))
            reasons = {g.frozen[a] for a in member.atoms.tolist() if a in g.frozen}
            if g.reason is not None:
                left.append((member.axis.module, g.reason))
            elif reasons:
                left.append((member.axis.module, sorted(reasons)[0]))
        out.append({"index": g.index, "kind": "group", "members": members, "channels": int(len(g.atoms)),
                    "prunable": int(len(g.prunable)), "left_out": sorted(set(left))})
    if graph.prop.opaque:
        out.append({"index": len(out), "kind": "opaque", "members": [], "channels": 0, "prunable": 0,
                    "left_out": sorted(graph.prop.opaque.items())})
    return out


def _dim(module: nn.Module, kind: str) -> int:
    if kind.startswith("param:"):
        return int(kind.split(":")[2])
    handler = handler_for(module)
    slices = handler.param_slices(module, kind) if handler else []
    return int(slices[0][1]) if slices else 0
