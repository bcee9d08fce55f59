"""Channel scores of a dependency group: per-layer slice scores -> per atom -> normalised per layer -> combined.

Criteria aggregate with these; which parameter slices a layer holds comes from the layer-rule lookup the
group's graph was built with (``group.module_rule``), so importance/ never imports structured/.
"""
from __future__ import annotations

from typing import Callable, Iterator, List, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import PruningError
from ..graph.propagate import ModuleRuleLookup

# fn(full parameter name, tensor, dim) -> one score per index along dim (float numpy / tensor), or None to skip
SliceFn = Callable[[str, torch.Tensor, int], Optional[torch.Tensor]]
REDUCTIONS = ("mean", "sum", "max", "prod")
NORMALIZERS = ("mean", "max", "sum", "none")


def member_slices(model: nn.Module, member, module_rule: Optional[ModuleRuleLookup]
                  ) -> List[Tuple[str, int, Optional[np.ndarray]]]:
    """(parameter path relative to the model, dim, index map) for a member's parameters (buffers skipped)."""
    module = model.get_submodule(member.module) if member.module else model
    prefix = f"{member.module}." if member.module else ""
    if member.kind.startswith("param:"):
        _, attr, dim = member.kind.split(":")
        slices = [(attr, int(dim), None)]
    else:
        if module_rule is None:
            raise PruningError(f"no layer-rule lookup for {member.module!r}: build the group with "
                               "prunekit.graph.build_graph(..., module_rule=<the layer-handler lookup>), as channel "
                               "pruning does")
        rule = module_rule(module)  # the injected layer handler for this module type
        slices = rule.param_slices(module, member.kind) if rule is not None else []
    out = []
    for path, dim, imap in slices:
        owner_path, _, attr = path.rpartition(".")
        owner = module.get_submodule(owner_path) if owner_path else module
        if isinstance(getattr(owner, attr, None), nn.Parameter):
            out.append((prefix + path, dim, imap))
    return out


def iter_member_scores(model: nn.Module, group, fn: SliceFn, kinds: Optional[Tuple[str, ...]] = None,
                       module_rule: Optional[ModuleRuleLookup] = None) -> Iterator[Tuple[object, np.ndarray]]:
    """For each group member with parameters: (GroupMember, score per position of that member in the group)."""
    params = dict(model.named_parameters(remove_duplicate=False))
    module_rule = module_rule or getattr(group, "module_rule", None)
    for member in group.members:
        if kinds is not None and not member.axis.kind.startswith(kinds):
            continue
        total = None
        for full, dim, imap in member_slices(model, member.axis, module_rule):
            v = fn(full, params[full], dim)
            if v is None:
                continue
            v = torch.as_tensor(v).detach().double().cpu().numpy()
            per_pos = v[imap].sum(axis=1) if imap is not None else v
            part = per_pos[member.positions]
            total = part if total is None else total + part
        if total is not None:
            yield member, total


def to_atoms(group, member, values: np.ndarray) -> np.ndarray:
    """Mean of a member's position scores over the positions of each group atom (NaN where it has none)."""
    index = np.searchsorted(group.atoms, member.atoms)
    sums = np.bincount(index, weights=values, minlength=len(group.atoms))
    counts = np.bincount(index, minlength=len(group.atoms))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(counts > 0, sums / np.maximum(counts, 1), np.nan)


def normalise(v: np.ndarray, how: str) -> np.ndarray:
    if how == "none":
        return v
    scale = {"mean": np.nanmean, "max": np.nanmax, "sum": np.nansum}[how](np.abs(v))
    return v / scale if np.isfinite(scale) and scale > 0 else v


def combine(rows: List[np.ndarray], reduction: str, n: int) -> np.ndarray:
    if not rows:
        return np.zeros(n)
    m = np.stack(rows)
    if reduction == "mean":
        out = np.nanmean(m, axis=0)
    elif reduction == "sum":
        out = np.nansum(m, axis=0)
    elif reduction == "max":
        out = np.nanmax(m, axis=0)
    else:
        out = np.nanprod(m, axis=0)
    return np.nan_to_num(out, nan=0.0)


def aggregate(group, model: nn.Module, fn: SliceFn, *, reduction: str = "mean", normalize: str = "mean",
              kinds: Optional[Tuple[str, ...]] = None, module_rule: Optional[ModuleRuleLookup] = None) -> np.ndarray:
    """One score per ``group.atoms`` from per-slice scores, each layer normalised, then reduced across layers.

    ``module_rule`` (module -> layer rule with ``param_slices``) names a layer's slices; None: the one the
    group's graph was built with.
    """
    rows = []
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN columns: an atom a member does not cover
        for member, values in iter_member_scores(model, group, fn, kinds, module_rule):
            rows.append(normalise(to_atoms(group, member, values), normalize))
        return combine(rows, reduction, len(group.atoms))


def norm_along(t: torch.Tensor, dim: int, p: int) -> torch.Tensor:
    """L1 (p=1) or L2 (p=2) norm of every slice of ``t`` along ``dim``."""
    t = t.detach()
    if t.dim() == 1:
        return t.abs().double()
    others = [d for d in range(t.dim()) if d != dim]
    return torch.linalg.vector_norm(t, ord=p, dim=others).double()
