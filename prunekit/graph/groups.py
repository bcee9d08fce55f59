"""Dependency groups: channels that are scored and chosen together, with the layer axes each one touches."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .capture import Captured, capture
from .propagate import PRODUCER_KINDS, Member, ModuleRuleLookup, Propagation, Propagator


@dataclass
class GroupMember:
    """A layer axis (a propagation :class:`Member`: module + axis kind) restricted to one group: its positions in
    this group and the atom (root id) of each."""

    axis: Member
    positions: np.ndarray  # indices along the member's axis that belong to this group
    atoms: np.ndarray  # root id of each of those positions


@dataclass
class Group:
    """Coupled channels: removing atom ``a`` removes every member position whose atom is ``a``."""

    index: int
    atoms: np.ndarray  # sorted root ids (one per removable unit: a channel, a head, a norm group)
    members: List[GroupMember]
    frozen: Dict[int, str] = field(default_factory=dict)  # atom -> why it must stay
    divisions: List[np.ndarray] = field(default_factory=list)  # atoms per division; equal removal per division
    reason: Optional[str] = None  # why the whole group is left out (None: prunable)
    module_rule: Optional[ModuleRuleLookup] = None  # the lookup the graph was built with: a layer's parameter slices

    @property
    def prunable(self) -> np.ndarray:
        """Sorted atoms that may be removed (none when the whole group is left out)."""
        if self.reason is not None:
            return np.zeros(0, dtype=np.int64)
        if getattr(self, "_prunable", None) is None or len(self._prunable[0]) != len(self.frozen):
            frozen = np.fromiter(self.frozen, dtype=np.int64, count=len(self.frozen))
            self._prunable = (frozen, self.atoms[~np.isin(self.atoms, frozen)])
        return self._prunable[1]

    def module_names(self) -> List[str]:
        return sorted({member.axis.module for member in self.members})

    def producers(self) -> List[GroupMember]:
        return [member for member in self.members if member.axis.kind in PRODUCER_KINDS]


@dataclass
class Graph:
    """Everything structured pruning needs from one capture of the model."""

    captured: Captured
    prop: Propagation
    groups: List[Group]
    values: Dict = field(default_factory=dict)  # fx node -> propagated Layout (activation criteria read it)

    @property
    def ids(self):
        return self.prop.ids


def build_graph(model: nn.Module, example_inputs, leaf_modules: Sequence = (), tracer: str = "auto", *,
                module_rule: ModuleRuleLookup) -> Graph:
    """Trace ``model``, propagate channel ids, and split the members into dependency groups.

    ``module_rule`` maps a module to the rule that moves its channel ids (the caller's layer-handler lookup,
    injected so this package depends on no pruning code); every group keeps it, so criteria find each layer's slices.
    """
    captured = capture(model, example_inputs, leaf_modules, tracer, keep_whole=lambda m: module_rule(m) is not None)
    propagator = Propagator(captured, model, module_rule)
    prop = propagator.run()
    unite_tied(model, prop, module_rule)
    groups = make_groups(prop)
    for g in groups:
        g.module_rule = module_rule
    return Graph(captured, prop, groups, propagator.values)


def unite_tied(model: nn.Module, prop: Propagation, module_rule: ModuleRuleLookup) -> None:
    """Members that slice the same tensor along the same dim are one set of channels (T5's embedding is shared
    by the encoder, the decoder and the LM head: their residual widths must be cut alike)."""
    modules = dict(model.named_modules(remove_duplicate=False))  # a shared module answers to every name
    by_tensor: Dict[Tuple[int, int], List[np.ndarray]] = {}
    for (name, kind), member in prop.members.items():
        module = modules.get(name)
        rule = module_rule(module) if module is not None else None
        slices = getattr(rule, "param_slices", None)
        if slices is None or member.ids is None:
            continue
        for path, dim, imap in slices(module, kind):
            owner_path, _, attr = path.rpartition(".")
            owner = module.get_submodule(owner_path) if owner_path else module
            t = getattr(owner, attr, None)
            if isinstance(t, torch.Tensor) and imap is None:
                by_tensor.setdefault((id(t), int(dim)), []).append(member.ids)
    for arrays in by_tensor.values():
        for other in arrays[1:]:
            if len(other) == len(arrays[0]):
                prop.ids.union(arrays[0], other)
            else:
                prop.ids.freeze(arrays[0], "a tied parameter is sliced along one dim by layers of different widths")
                prop.ids.freeze(other, "a tied parameter is sliced along one dim by layers of different widths")


def make_groups(prop: Propagation) -> List[Group]:
    ids = prop.ids
    frozen = ids.frozen_roots()
    by_space: Dict[int, List[GroupMember]] = {}
    for member in prop.members.values():
        if len(member.ids) == 0:
            continue
        roots = ids.roots(member.ids)
        spaces = ids.spaces(member.ids)
        for s in np.unique(spaces).tolist():
            pos = np.nonzero(spaces == s)[0]
            by_space.setdefault(s, []).append(GroupMember(member, pos, roots[pos]))
    groups = []
    for k, (space, members) in enumerate(sorted(by_space.items())):
        atoms = np.unique(np.concatenate([member.atoms for member in members]))
        group = Group(k, atoms, members, {a: frozen[a] for a in atoms.tolist() if a in frozen})
        if not group.producers():
            group.reason = "no layer produces these channels (only raw parameters or consumers)"
        groups.append(group)
    _attach_divisions(prop, ids, groups)
    _check_patches(prop, ids, groups)
    return groups


def _attach_divisions(prop: Propagation, ids, groups: List[Group]) -> None:
    by_atom = {a: g for g in groups for a in g.atoms.tolist()}
    for div in prop.divisions:
        rows = [np.unique(ids.roots(row)) for row in div]
        owners = {by_atom[a].index for r in rows for a in r.tolist() if a in by_atom}
        if not owners or all(np.array_equal(rows[0], r) for r in rows[1:]):
            continue  # every row holds the same atoms: removing an atom shrinks all rows alike
        disjoint = len(np.unique(np.concatenate(rows))) == sum(len(r) for r in rows)
        if len(owners) == 1 and disjoint and len({len(r) for r in rows}) == 1:
            groups[owners.pop()].divisions.append(np.stack(rows))
            continue
        for gi in owners:
            groups[gi].reason = "equal-size channel blocks (grouped conv / chunk) span several groups; kept whole"


def _check_patches(prop: Propagation, ids, groups: List[Group]) -> None:
    """A patched attribute (num_heads) must belong to one group, else that group is left out."""
    by_atom = {a: g for g in groups for a in g.atoms.tolist()}
    seen: Dict[Tuple[str, str], int] = {}
    for patch in prop.patches:
        atoms = np.unique(ids.roots(patch.ids))
        owners = {by_atom[a].index for a in atoms.tolist() if a in by_atom}
        key = (patch.module, patch.attr)
        for gi in owners | ({seen[key]} if key in seen else set()):
            if len(owners) > 1 or (key in seen and seen[key] not in owners):
                groups[gi].reason = f"attribute {patch.module}.{patch.attr} sizes channels of several groups"
        if owners:
            seen.setdefault(key, min(owners))
