"""Walk a traced graph once, giving every value a Layout and recording which layer dims read/write which channel ids."""
from __future__ import annotations

import operator
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch.fx as fx
from torch import nn

from .capture import Captured
from .ids import ChannelIds
from .layout import Layout, iter_layouts, untracked

PRODUCER_KINDS = ("out", "embed")  # member kinds that create channels (a group needs one to be prunable)
SHAPE_QUERIES = {"size", "dim", "numel", "shape", "dtype", "device", "ndim", "is_contiguous", "sym_size", "sym_numel",
                 "sym_stride", "stride"}


@dataclass
class Member:
    """One axis of one layer that holds a position per channel id: ``kind`` names the axis for the layer's handler."""

    module: str  # module name in the model ('' for the root)
    kind: str  # handler axis: 'out', 'in', 'chan', 'embed', or 'param:<attr>:<dim>' for a raw parameter
    ids: np.ndarray  # channel id of every position along that axis


@dataclass
class ConstPatch:
    """An int attribute a reshape reads (``num_heads``...) that must shrink with the channels in ``ids``."""

    module: str
    attr: str
    ids: np.ndarray  # the positions whose kept count is the attribute's new value


@dataclass
class Propagation:
    """Result of propagation: ids, members, grouped-conv divisions, constant patches, opaque modules."""

    ids: ChannelIds
    members: Dict[Tuple[str, str], Member] = field(default_factory=dict)
    divisions: List[np.ndarray] = field(default_factory=list)  # (groups, per_group) id arrays: equal removal per row
    patches: List[ConstPatch] = field(default_factory=list)
    derived_literals: List[Tuple[np.ndarray, str]] = field(default_factory=list)  # literals fixed by a patched attr
    opaque: Dict[str, str] = field(default_factory=dict)  # module name -> why its channels are left out


# How a module type moves channel ids is told by a lookup ``module -> rule or None``; a rule has
# ``propagate(propagator, node, module, name)``. structured/ owns the table (its layer handlers also
# know how to slice tensors) and passes it in, so graph/ never imports structured/.
ModuleRuleLookup = Callable[[nn.Module], Any]


class Propagator:
    """Visits nodes in order; module calls go to layer handlers, function/method calls to op rules."""

    def __init__(self, captured: Captured, model: nn.Module, module_rule: ModuleRuleLookup):
        self.captured = captured
        self.model = model
        self.module_rule = module_rule  # module -> its channel rule (a layer handler) or None
        self.modules = dict(model.named_modules())
        self.result = Propagation(ids=ChannelIds())
        self.values: Dict[fx.Node, Any] = {}
        self._module_ids: Dict[Tuple[str, str], np.ndarray] = {}
        self.result.opaque.update(captured.auto_leaves)

    @property
    def ids(self) -> ChannelIds:
        return self.result.ids

    # ---- helpers used by handlers and op rules -------------------------------------------
    def shape(self, node: fx.Node):
        return self.captured.shape(node)

    def value(self, arg: Any) -> Any:
        if isinstance(arg, fx.Node):
            return self.values.get(arg)
        if isinstance(arg, (tuple, list)):
            return type(arg)(self.value(a) for a in arg)
        if isinstance(arg, dict):
            return {k: self.value(v) for k, v in arg.items()}
        return None

    def layout(self, arg: Any) -> Optional[Layout]:
        v = self.value(arg)
        return v if isinstance(v, Layout) else None

    def untracked_like(self, node: fx.Node) -> Any:
        """A value with no channel ids shaped like the node's example output (tensor, tuple of tensors...)."""
        return _meta_value(node.meta.get("tensor_meta"))

    def module_ids(self, name: str, kind: str, n: int) -> np.ndarray:
        """The ids a module's axis allocates (the same on every call, so shared layers stay consistent)."""
        key = (name, kind)
        if key not in self._module_ids:
            self._module_ids[key] = self.ids.new(n, f"{name}:{kind}")
        return self._module_ids[key]

    def add_member(self, module: str, kind: str, ids: Optional[np.ndarray]) -> None:
        if ids is None:
            return
        key = (module, kind)
        old = self.result.members.get(key)
        if old is None:
            self.result.members[key] = Member(module, kind, np.asarray(ids, dtype=np.int64))
        elif len(old.ids) == len(ids):
            self.ids.union(old.ids, ids)  # a layer called twice: its positions must mean the same channels
        else:
            self.freeze_all([old.ids, ids], f"{module} is called with different channel counts")

    def freeze_value(self, value: Any, reason: str) -> None:
        for lay in iter_layouts(value):
            for ids in lay.dims:
                self.ids.freeze(ids, reason)

    def freeze_all(self, arrays, reason: str) -> None:
        for a in arrays:
            self.ids.freeze(a, reason)

    def owner(self, node: fx.Node) -> str:
        stack = node.meta.get("nn_module_stack") or {}
        if not stack:
            return ""
        last = list(stack.values())[-1]
        return last[0] if isinstance(last, tuple) else str(last)

    # ---- the walk -----------------------------------------------------------------------------
    def run(self) -> Propagation:
        # fill the op tables
        from . import aten_ops, factory_ops, join_ops, ops, position_ops, product_ops  # noqa: F401

        for node in self.captured.gm.graph.nodes:
            if node.op == "placeholder":
                self.values[node] = self.untracked_like(node)
            elif node.op == "get_attr":
                self.values[node] = self._get_attr(node)
            elif node.op == "call_module":
                self.values[node] = self._call_module(node)
            elif node.op in ("call_function", "call_method"):
                self.values[node] = self._call_op(node)
            elif node.op == "output":
                self.freeze_value(self.value(node.args[0]), "reaches the model output")
        return self.result

    def _get_attr(self, node: fx.Node) -> Any:
        try:
            value = _resolve_attr(self.model, node.target)
        except AttributeError:  # a constant lifted by torch.export
            return self.untracked_like(node)
        shape = self.shape(node)
        if shape is None or not isinstance(value, nn.Parameter):
            return self.untracked_like(node)
        owner, _, attr = str(node.target).rpartition(".")
        dims = []
        for d, n in enumerate(shape):
            if n > 1:
                ids = self.module_ids(str(node.target), f"dim{d}", n)
                self.add_member(owner, f"param:{attr}:{d}", ids)
                dims.append(ids)
            else:
                dims.append(None)
        return Layout(dims)

    def _call_module(self, node: fx.Node) -> Any:
        name = str(node.target)
        module = self.modules[name]
        inputs = [self.value(a) for a in node.args] + [self.value(v) for v in node.kwargs.values()]
        handler = self.module_rule(module)
        if handler is None:
            self.freeze_value(inputs, f"read by {name} ({type(module).__name__}), a layer with no handler")
            self.result.opaque.setdefault(name, f"{type(module).__name__} has no structured-pruning handler")
            return self.untracked_like(node)
        return handler.propagate(self, node, module, name)

    def _call_op(self, node: fx.Node) -> Any:
        from .ops import rule_for, op_name

        inputs = [self.value(a) for a in node.args] + [self.value(v) for v in node.kwargs.values()]
        tracked = any(lay.any_tracked() for lay in iter_layouts(inputs))
        name = op_name(node)
        if node.op == "call_function" and node.target is operator.getitem and not isinstance(self.value(node.args[0]), Layout):
            container = self.value(node.args[0])
            if isinstance(container, (tuple, list)) and isinstance(node.args[1], int) and node.args[1] < len(container):
                return container[node.args[1]]
            return self.untracked_like(node)
        if name in SHAPE_QUERIES or (node.op == "call_function" and node.target is getattr):
            return self.untracked_like(node)
        rule = rule_for(node)
        if not tracked and not getattr(rule, "from_sizes", False):  # a factory (zeros) may make channels itself
            return self.untracked_like(node)
        if rule is None:
            self.freeze_value(inputs, f"read by `{name}` ({node.name}), an op with no channel rule")
            return self.untracked_like(node)
        return rule(self, node)


def _resolve_attr(model: nn.Module, target: str) -> Any:
    obj: Any = model
    for part in str(target).split("."):
        obj = getattr(obj, part)
    return obj


def _meta_value(meta: Any) -> Any:
    if meta is None:
        return None
    if hasattr(meta, "shape") and hasattr(meta, "dtype"):
        return untracked(len(meta.shape))
    if isinstance(meta, (tuple, list)):
        return type(meta)(_meta_value(m) for m in meta) if not hasattr(meta, "_fields") else tuple(_meta_value(m) for m in meta)
    if isinstance(meta, dict):
        return {k: _meta_value(v) for k, v in meta.items()}
    return None
