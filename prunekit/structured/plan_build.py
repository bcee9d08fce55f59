"""Building a :class:`~prunekit.structured.planner.Plan` from what structured pruning traced and chose.

:func:`channel_plan` records, from a traced graph, everything a plan needs to predict and apply without
tracing again (each layer axis's atoms, reshape-attribute atoms, parameter slices and shapes, per-layer and
per-op MACs); :func:`block_plan` and :func:`input_plan` do the same for residual blocks and input features.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
from torch import nn

from .budget import is_depthwise, width_linear_macs
from .planner import Plan, PlanGroup


def param_shapes(model: nn.Module) -> Dict[str, List[int]]:
    return {n: list(p.shape) for n, p in model.named_parameters()}


def channel_plan(model: nn.Module, graph, scores: Dict[int, np.ndarray], removed: Dict[int, np.ndarray],
                 spec: Dict[str, Any], macs_total: int, macs_layers: Dict[str, int],
                 macs_search: Optional[Dict[str, Any]] = None) -> Plan:
    """A channel :class:`Plan` from a traced graph, its group scores and the atoms chosen per group."""
    from .describe import member_rows
    from .handlers import handler_for

    ids = graph.ids
    members, slices, types, grouped = {}, {}, {}, []
    for (module, kind), member in graph.prop.members.items():
        if len(member.ids) == 0:
            continue
        key = f"{module}\x00{kind}"
        members[key] = ids.roots(member.ids).tolist()
        mod = model.get_submodule(module) if module else model
        types[module] = type(mod).__name__
        if is_depthwise(mod):
            grouped.append(module)
        prefix = f"{module}." if module else ""
        if kind.startswith("param:"):
            _, attr, dim = kind.split(":")
            slices[key] = [(prefix + attr, int(dim), None)]
        else:
            handler = handler_for(mod)
            slices[key] = [(prefix + path, int(dim), None if imap is None else np.asarray(imap).tolist())
                           for path, dim, imap in (handler.param_slices(mod, kind) if handler else [])]
            groups_ = getattr(mod, "groups", 1)
            if kind == "in" and isinstance(mod, nn.modules.conv._ConvNd) and 1 < groups_ < mod.in_channels:
                slices[key].append((prefix + "weight", 1 - int(mod.transposed), {"per_group": int(groups_)}))
    patches = [{"module": p.module, "attr": p.attr, "atoms": ids.roots(p.ids).tolist()} for p in graph.prop.patches]
    ops = _op_factors(graph)
    groups, group_atoms = [], []
    for g in graph.groups:
        position = {int(a): i for i, a in enumerate(g.atoms.tolist())}
        group_atoms.append([int(a) for a in g.atoms.tolist()])
        s = scores.get(g.index)
        groups.append(PlanGroup(
            index=g.index, kind="channels", layers=sorted({m.axis.module for m in g.producers()}),
            members=member_rows(model, g), size=int(len(g.atoms)),
            remove=sorted(position[int(a)] for a in removed.get(g.index, np.zeros(0, dtype=np.int64)).tolist()),
            scores=None if s is None else [float(v) for v in s.tolist()], reason=g.reason,
            frozen={position[a]: why for a, why in g.frozen.items() if a in position},
            divisions=[[[position[int(a)] for a in row.tolist()] for row in div] for div in g.divisions]))
    layout = {"members": members, "param_slices": slices, "types": types, "grouped": sorted(set(grouped)),
              "patches": patches, "group_atoms": group_atoms, "param_shapes": param_shapes(model),
              "macs_total": int(macs_total), "macs_layers": {k: int(v) for k, v in macs_layers.items()},
              "macs_search": macs_search, "opaque": dict(graph.prop.opaque), "ops": ops,
              "macs_width_linear": width_linear_macs(graph.captured)}
    return Plan("channel", groups, spec, layout)


def _op_factors(graph) -> List[Dict[str, Any]]:
    """MACs of each matmul / attention op between activations, with the channel atoms of every dim its count
    multiplies (output dims and the contracted dim), so a plan predicts how the op shrinks."""
    from ..graph.ops import op_name
    from .budget import _op_macs

    captured, ids, out = graph.captured, graph.ids, []
    for node in captured.gm.graph.nodes:
        if node.op not in ("call_function", "call_method"):
            continue
        macs = _op_macs(node, captured) if captured.shape(node) is not None else 0
        if not macs:
            continue
        name = op_name(node)
        args = [a for a in node.args[:2]]
        if name == "scaled_dot_product_attention":
            q, k = (graph.values.get(a) for a in args)
            dims = [(q, d) for d in range(q.ndim)] if q is not None else []
            dims += [(k, k.ndim - 2)] if k is not None else []
        else:
            o, a = graph.values.get(node), graph.values.get(args[0])
            dims = [(o, d) for d in range(o.ndim)] if o is not None else []
            dims += [(a, a.ndim - 1)] if a is not None else []
        factors = [ids.roots(lay.dims[d]).tolist() for lay, d in dims if lay.dims[d] is not None]
        if factors:
            out.append({"macs": int(macs), "factors": factors})
    return out


def block_plan(model: nn.Module, names: List[str], scores: Dict[str, float], count: int, spec: Dict[str, Any],
               macs_total: int, macs_layers: Dict[str, int], keep=()) -> Plan:
    """Remove the ``count`` lowest-scoring of ``names`` (never those in ``keep``)."""
    ranked = sorted((n for n in names if n not in set(keep)), key=lambda n: (scores[n], n))
    gone = set(ranked[:count])
    group = PlanGroup(index=0, kind="blocks", layers=list(names), members=[(n, type(model.get_submodule(n)).__name__,
                                                                            "block", 1) for n in names],
                      size=len(names), remove=[i for i, n in enumerate(names) if n in gone],
                      scores=[float(scores[n]) for n in names])
    block_params = {n: sum(p.numel() for p in model.get_submodule(n).parameters()) for n in names}
    layout = {"param_shapes": param_shapes(model), "block_params": block_params, "macs_total": int(macs_total),
              "macs_layers": {k: int(v) for k, v in macs_layers.items()}}
    return Plan("block", [group], spec, layout)


def input_plan(model: nn.Module, name: str, scores: np.ndarray, keep: np.ndarray, spec: Dict[str, Any],
               macs_total: int, macs_layers: Dict[str, int]) -> Plan:
    linear = model.get_submodule(name)
    kept = set(int(i) for i in keep.tolist())
    group = PlanGroup(index=0, kind="inputs", layers=[name], members=[(name, type(linear).__name__, "in",
                                                                       int(linear.in_features))],
                      size=int(linear.in_features), remove=[i for i in range(linear.in_features) if i not in kept],
                      scores=[float(s) for s in np.asarray(scores).tolist()], frozen={})
    layout = {"param_shapes": param_shapes(model), "input_out_features": int(linear.out_features),
              "macs_total": int(macs_total), "macs_layers": {k: int(v) for k, v in macs_layers.items()}}
    return Plan("input", [group], spec, layout)


def snapshot_spec(spec) -> Dict[str, Any]:
    """The given fields of a PruneSpec in JSON-able form (types by name, criteria objects by their name)."""
    out = {}
    for k, v in spec.given().items():
        out[k] = _jsonable(v)
    return out


def _jsonable(v: Any) -> Any:
    if v is None or isinstance(v, (bool, int, float, str)):
        return v
    if isinstance(v, type):
        return v.__name__
    if isinstance(v, dict):
        return {str(_jsonable(k)): _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple, set)):
        return [_jsonable(x) for x in v]
    if isinstance(v, nn.Module):
        return f"<{type(v).__name__}>"
    return getattr(v, "name", None) or getattr(v, "__name__", None) or repr(v)
