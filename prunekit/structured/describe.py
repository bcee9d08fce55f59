"""describe_groups: what `prunekit inspect` shows — each dependency group, its members, and what is left out and why."""
from __future__ import annotations

from typing import Any, Dict, List, Sequence

from torch import nn

from ..graph.groups import build_graph
from .handlers import handler_for


def describe_groups(model: nn.Module, example_inputs, ignore=None, leaf_modules: Sequence[Any] = (),
                    tracer: str = "auto") -> List[Dict[str, Any]]:
    """One dict per group: ``members`` [(module, type, dim, n channels)], ``channels``, ``prunable``, ``left_out``
    [(module, reason)]; a last entry with ``kind='opaque'`` lists layers no channel can flow through.

    An ignore pattern that matches no module raises :class:`~prunekit.errors.PruningError`; an ignore list
    that leaves nothing prunable does not (the groups then say why they are left out)."""
    from ..api import run_once
    from .api import StructuredConfig, _as_list, check_structured_patterns, mark_selection

    check_structured_patterns(model, ignore=ignore)  # a typo in ignore is an error here too
    names = {id(m): n for n, m in model.named_modules()}
    ignore = [names.get(id(p), p) if isinstance(p, nn.Module) else p for p in _as_list(ignore)]
    run_once(model, example_inputs)  # wrong example inputs: InputError naming their shapes, not a trace dump
    graph = build_graph(model, example_inputs, tuple(_as_list(leaf_modules)), tracer, module_rule=handler_for)
    cfg = StructuredConfig(ignore=ignore)
    if cfg.ignore:
        # an ignore list that leaves no prunable group is still described (every group shows why it is left out)
        mark_selection(graph, model, cfg, allow_empty=True)
    out = []
    for g in graph.groups:
        members, left = [], []
        for member in g.members:
            mod = model.get_submodule(member.member.module) if member.member.module else model
            members.append((member.member.module, type(mod).__name__, _dim(mod, member.member.kind), int(len(member.positions))))
            reasons = {g.frozen[a] for a in member.atoms.tolist() if a in g.frozen}
            if g.reason is not None:
                left.append((member.member.module, g.reason))
            elif reasons:
                left.append((member.member.module, sorted(reasons)[0]))
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
