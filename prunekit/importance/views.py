"""Read-only views of a dependency group, handed to a plain-callable channel criterion.

A channel criterion written as a function receives a :class:`GroupView` and returns one score per
channel of the group (``len(view)`` values; higher = kept)::

    def producer_l1(group):
        scores = torch.zeros(len(group), dtype=torch.float64)
        for m in group.producers:                      # the layers that create the channels
            rows = m.params["weight"].abs().flatten(1).sum(1)   # one value per row (channel axis first)
            scores += m.to_channels(rows).nan_to_num()
        return scores

    prunekit.prune(model, x, granularity="channel", criterion=producer_l1)

Each :class:`MemberView` is one layer axis coupled to the group: ``params`` maps the layer's parameter
names (``"weight"``, ``"bias"``, ...) to detached copies restricted to the group, with the group's
channel axis moved first, so row ``i`` belongs to channel ``channels[i]``. A layer may hold several rows
per channel (a Linear after a flatten holds ``H * W`` input columns per conv channel; an attention head
holds ``head_dim`` rows); :meth:`MemberView.to_channels` averages (or sums...) per-row values per channel.
Parameters whose group axis carries several indices per position (nn.MultiheadAttention's
``in_proj_bias``: the q, k and v entries of one embedding channel) get an extra second axis of that size.
A parameter that runs along the group on two axes (``in_proj_weight``: rows and columns) appears once per
axis, as ``params["in_proj_weight:0"]`` and ``params["in_proj_weight:1"]``; ``slices`` lists every
(name, axis, values) of a member.
"""
from __future__ import annotations

from dataclasses import dataclass
from types import MappingProxyType
from typing import Mapping, Tuple

import numpy as np
import torch
from torch import nn

from ..graph.propagate import PRODUCER_KINDS
from .aggregate import member_slices

_REDUCE = ("mean", "sum", "max", "min")


@dataclass(frozen=True, eq=False)
class ParamSlice:
    """One parameter's part in a group: ``values`` = the parameter with axis ``dim`` moved first, group rows only."""

    name: str  # the parameter's name in the module ("weight", "out_proj.bias", ...)
    dim: int  # the parameter's axis that the group's channels run along
    values: torch.Tensor  # a detached copy; row i belongs to channel ``channels[i]`` of the member


@dataclass(frozen=True, eq=False)
class MemberView:
    """One layer axis coupled to the group (a producer's output rows, a consumer's input columns, a norm's channels)."""

    module_name: str  # the module's name in the model ('' for the root)
    module: nn.Module  # the module itself (read it, do not change it)
    kind: str  # the axis: 'out', 'embed' (they create the channels), 'in', 'chan', or 'param:<attr>:<dim>'
    channels: torch.Tensor  # int64, one per row of every tensor in ``params``: its channel index in the group
    params: Mapping[str, torch.Tensor]  # parameter name -> ParamSlice.values ("name:dim" if sliced along 2 axes)
    slices: Tuple[ParamSlice, ...]  # the same tensors with their parameter name and axis
    n_channels: int  # len(group)

    @property
    def weight(self):
        """``params["weight"]``, or None when the member has no weight slice."""
        return self.params.get("weight")

    @property
    def is_producer(self) -> bool:
        return self.kind in PRODUCER_KINDS

    def to_channels(self, row_values, reduce: str = "mean") -> torch.Tensor:
        """Per-row values (one per row of ``params``) -> one float64 value per channel of the group.

        ``reduce``: how the rows of one channel combine ("mean", "sum", "max", "min"); channels this
        member holds no row of are NaN (``torch.nan_to_num`` or ``torch.nanmean`` handle them).
        """
        if reduce not in _REDUCE:
            raise ValueError(f"reduce must be one of {_REDUCE}, got {reduce!r}")
        v = torch.as_tensor(row_values).detach().to("cpu", torch.float64).reshape(-1)
        if v.numel() != self.channels.numel():
            raise ValueError(f"{self.module_name or 'model'} ({self.kind}) has {self.channels.numel()} rows, "
                             f"got {v.numel()} values")
        out = torch.full((self.n_channels,), float("nan"), dtype=torch.float64)
        if not v.numel():
            return out
        how = {"mean": "mean", "sum": "sum", "max": "amax", "min": "amin"}[reduce]
        return out.scatter_reduce(0, self.channels, v, reduce=how, include_self=False)


class GroupView:
    """A read-only view of one dependency group for a callable channel criterion.

    ``len(view)``: the number of channels to score. ``members``: every coupled layer axis that holds
    parameters, as :class:`MemberView`; ``producers``: those that create the channels. ``prunable``: a
    bool per channel (False: the channel must stay whatever it scores). ``reduction`` / ``normalize``: the
    options the pruning call was given (built-in criteria combine layers with them; a callable may ignore
    them). ``model`` and ``group`` (the raw :class:`prunekit.graph.groups.Group`) are there for anything else.
    """

    def __init__(self, group, model: nn.Module, *, reduction: str = "mean", normalize: str = "mean"):
        self.group, self.model = group, model
        self.reduction, self.normalize = reduction, normalize
        self.index = group.index
        self.atoms = group.atoms.copy()
        self._members = None

    def __len__(self) -> int:
        return len(self.atoms)

    @property
    def module_names(self) -> Tuple[str, ...]:
        return tuple(self.group.module_names())

    @property
    def prunable(self) -> torch.Tensor:
        return torch.from_numpy(np.isin(self.atoms, self.group.prunable))

    @property
    def members(self) -> Tuple[MemberView, ...]:
        if self._members is None:
            self._members = tuple(self._build())
        return self._members

    @property
    def producers(self) -> Tuple[MemberView, ...]:
        return tuple(m for m in self.members if m.is_producer)

    def _build(self):
        params = dict(self.model.named_parameters(remove_duplicate=False))
        rule = getattr(self.group, "module_rule", None)
        for entry in self.group.members:
            member = entry.axis
            prefix = f"{member.module}." if member.module else ""
            positions = torch.as_tensor(np.asarray(entry.positions, dtype=np.int64))
            slices = []
            for full, dim, imap in member_slices(self.model, member, rule):
                t = params[full].detach().movedim(dim, 0)
                index = positions if imap is None else torch.as_tensor(np.asarray(imap, dtype=np.int64))[positions]
                slices.append(ParamSlice(full[len(prefix):], dim, t[index]))  # indexing copies: the model is safe
            if not slices:
                continue
            names = [sl.name for sl in slices]
            tensors = {(sl.name if names.count(sl.name) == 1 else f"{sl.name}:{sl.dim}"): sl.values for sl in slices}
            channels = torch.as_tensor(np.searchsorted(self.atoms, entry.atoms).astype(np.int64))
            module = self.model.get_submodule(member.module) if member.module else self.model
            yield MemberView(member.module, module, member.kind, channels, MappingProxyType(tensors), tuple(slices),
                             len(self.atoms))

    def __repr__(self) -> str:
        return f"GroupView(index={self.index}, channels={len(self)}, modules={list(self.module_names)})"
