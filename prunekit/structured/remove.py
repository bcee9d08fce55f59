"""Physically remove chosen atoms: slice every member layer, update reshape attributes, and write the plan."""
from __future__ import annotations

import re

from typing import Any, Dict, Iterable, List, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import PruningError
from .attributes import refresh_attributes, refresh_config
from .handlers import handler_for, slice_tensor
from .handlers.base import positions_to_indices

PLAN_VERSION = 1


def empty_plan() -> Dict[str, Any]:
    return {"version": PLAN_VERSION, "modules": {}, "params": {}, "attributes": [], "removed_blocks": [], "input_features": None}


def keeps_from_removed(graph, removed_atoms: Iterable[int]) -> Dict[str, Dict[str, np.ndarray]]:
    """module -> member kind -> kept positions, for every member that loses at least one position."""
    removed = np.zeros(len(graph.ids), dtype=bool)
    removed[np.fromiter((int(a) for a in removed_atoms), dtype=np.int64)] = True
    out: Dict[str, Dict[str, np.ndarray]] = {}
    for (module, kind), member in graph.prop.members.items():
        keep = ~removed[graph.ids.roots(member.ids)]
        if not keep.all():
            out.setdefault(module, {})[kind] = np.nonzero(keep)[0]
    return out


def attribute_updates(graph, removed_atoms: Iterable[int]) -> List[Dict[str, Any]]:
    removed = set(int(a) for a in removed_atoms)
    updates: Dict[Tuple[str, str], int] = {}
    for patch in graph.prop.patches:
        roots = graph.ids.roots(patch.ids)
        kept = int(sum(r not in removed for r in roots.tolist()))
        if kept != len(roots):
            updates[(patch.module, patch.attr)] = kept
    return [{"module": m, "attr": a, "value": v} for (m, a), v in sorted(updates.items())]


def apply_keeps(model: nn.Module, keeps: Dict[str, Dict[str, Any]], plan: Dict[str, Any]) -> None:
    """Slice each module to its kept positions (same code path for pruning and for apply_plan)."""
    ties = find_ties(model)
    _slice_modules(model, keeps, plan)
    retie(model, ties)
    refresh_attributes(model)  # attention modules' head counts and widths describe the sliced layers
    refresh_config(model)  # and so does the model's config, where every layer agrees


def find_ties(model: nn.Module) -> List[Tuple[Any, List[Tuple[nn.Module, str]]]]:
    """(the Parameter, its (module, attribute) owners) for every Parameter held by several owners (tied
    embeddings / heads; T5's encoder and decoder embeddings are separate modules sharing one weight)."""
    by_id: Dict[int, Tuple[Any, List[Tuple[nn.Module, str]]]] = {}
    for module in model.modules():
        for attr, p in module._parameters.items():
            if p is not None:
                by_id.setdefault(id(p), (p, []))[1].append((module, attr))
    return [entry for entry in by_id.values() if len(entry[1]) > 1]


def retie(model: nn.Module, ties) -> None:
    """Slicing replaced tied parameters one owner at a time (or only the owner the graph saw): share one
    Parameter again. Every owner that was sliced must agree; owners that were not get the sliced one, and their
    size attributes follow it."""
    for original, owners in ties:
        sliced = [(m, a) for m, a in owners if getattr(m, a) is not original]
        if not sliced:
            continue
        first = getattr(*sliced[0])
        for module, attr in sliced[1:]:
            other = getattr(module, attr)
            if other.shape != first.shape or not torch.equal(other.detach(), first.detach()):
                raise PruningError(
                    f"tied parameter {type(module).__name__}.{attr} was pruned differently from its twin; "
                    "ignore one of the layers sharing it (ignore=[...])"
                )
        for module, attr in owners:
            if getattr(module, attr) is not first:
                setattr(module, attr, first)
                _sizes_from_weight(module, attr)


def _sizes_from_weight(module: nn.Module, attr: str) -> None:
    """An owner that shares a sliced weight it was not sliced through: its size attributes, from the weight."""
    if attr != "weight":
        return
    w = module.weight
    if isinstance(module, nn.Embedding):
        module.num_embeddings, module.embedding_dim = int(w.shape[0]), int(w.shape[1])
    elif isinstance(module, nn.Linear):
        module.out_features, module.in_features = int(w.shape[0]), int(w.shape[1])


def _slice_modules(model: nn.Module, keeps: Dict[str, Dict[str, Any]], plan: Dict[str, Any]) -> None:
    for name, kinds in keeps.items():
        module = model.get_submodule(name) if name else model
        arrays = {k: np.asarray(v, dtype=np.int64) for k, v in kinds.items()}
        raw = {k: v for k, v in arrays.items() if k.startswith("param:")}
        layer = {k: v for k, v in arrays.items() if not k.startswith("param:")}
        _record_params(module, name, layer, raw, plan)
        for kind, pos in raw.items():
            _, attr, dim = kind.split(":")
            slice_tensor(module, attr, int(dim), pos)
        changed: Dict[str, Any] = {}
        if layer:
            handler = handler_for(module)
            changed = handler.prune(module, layer)
        plan["modules"][name] = {
            "type": type(module).__name__,
            "keep": {k: v.tolist() for k, v in arrays.items()},
            "attrs": changed,
        }


def _record_params(module, name, layer, raw, plan) -> None:
    """Kept indices per parameter/buffer and dim (before slicing), for masks, checks and tools reading the plan."""
    prefix = f"{name}." if name else ""
    handler = handler_for(module)
    for kind, pos in layer.items():
        for path, dim, imap in handler.param_slices(module, kind) if handler else []:
            owner_path, _, attr = path.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            if getattr(owner, attr, None) is not None:
                plan["params"].setdefault(prefix + path, {})[str(dim)] = positions_to_indices(pos, imap).tolist()
    for kind, pos in raw.items():
        _, attr, dim = kind.split(":")
        plan["params"].setdefault(prefix + attr, {})[dim] = pos.tolist()


def apply_attributes(model: nn.Module, updates: List[Dict[str, Any]]) -> None:
    for u in updates:
        module = model.get_submodule(u["module"]) if u["module"] else model
        set_int_attribute(module, u["attr"], int(u["value"]))


ITEM = re.compile(r"^([A-Za-z][A-Za-z0-9_]*)\[(\d+)\]$")  # "unflattened_size[0]": one entry of a tuple attribute


def get_int_attribute(module: nn.Module, attr: str) -> Any:
    """``module.attr``, or one entry ``module.name[i]`` of a tuple attribute (None when absent)."""
    m = ITEM.match(attr)
    if not m:
        return getattr(module, attr, None)
    seq = getattr(module, m.group(1), None)
    i = int(m.group(2))
    return seq[i] if isinstance(seq, (tuple, list)) and i < len(seq) else None


def set_int_attribute(module: nn.Module, attr: str, value: int) -> None:
    m = ITEM.match(attr)
    if not m:
        setattr(module, attr, value)
        return
    name, i = m.group(1), int(m.group(2))
    seq = list(getattr(module, name))
    seq[i] = value
    setattr(module, name, type(getattr(module, name))(seq) if isinstance(getattr(module, name), tuple) else seq)
