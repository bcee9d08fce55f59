"""Channel rules for tensors made from sizes (zeros, ones, full) or shaped like another tensor (zeros_like...).

A filled tensor holds one value everywhere, so along any dim its positions are interchangeable: a zero bias of
``(1, self.n_heads, q, k)`` (T5's cross-attention position bias, made once by the first decoder block and added
to the scores of every block) may be added to heads that lose some of their number, provided the pruned model
makes it with the kept count. That holds when the size is an int attribute of the module that makes it and the
attribute is updated: a size equal to a head-count attribute (``n_heads``, ``num_heads``) gets fresh channel ids
and a :class:`~prunekit.graph.propagate.ConstPatch` of that attribute, so whatever it is added to (the heads)
shares them. Other sizes stay untracked (adding them to channels freezes those, as before).
"""
from __future__ import annotations

import linecache
import re
from typing import Any, List, Optional

import numpy as np
import torch
import torch.fx as fx

from .layout import Layout
from .ops import register_op, unary
from .reshape import HEAD_NAME

aten = torch.ops.aten
SIZE_WORDS = re.compile(r"dim|size", re.I)  # `head_dim`, `attention_head_size`: not a head count
TRACE_FRAME = re.compile(r'File "([^"]+)", line (\d+)')


def _ops(*names: str) -> List[Any]:
    out = []
    for name in names:
        packet = getattr(aten, name, None)
        if packet is not None:
            out.extend(getattr(packet, o) for o in packet.overloads())
    return out


def _sizes(node: fx.Node) -> List[Any]:
    """The size a factory call spells out: ``zeros(size)`` / ``zeros(*size)``, ``x.new_zeros(size)``."""
    from .ops import op_name

    args = list(node.args)
    if op_name(node).startswith("new_"):
        args = args[1:]
    if op_name(node) == "full" or op_name(node).startswith("new_full"):
        args = args[:1]  # full(size, fill_value)
    size = node.kwargs.get("size", args[0] if len(args) == 1 and isinstance(args[0], (tuple, list)) else args)
    return list(size) if isinstance(size, (tuple, list)) else [size]


def _head_count_attrs(p, node: fx.Node, value: int) -> List[str]:
    """Int attributes of the module that runs ``node`` that hold ``value`` and name a head count (and, where the
    call's source is known, appear in it: ``zeros(1, self.n_heads, ...)``, not ``zeros(1, 4, ...)``)."""
    from .ops import op_name

    owner = p.modules.get(p.owner(node))
    if owner is None:
        return []
    found = [k for k, v in vars(owner).items() if type(v) is int and v == value and not k.startswith("_")
             and HEAD_NAME.search(k) and not SIZE_WORDS.search(k)]
    source = call_source(node)
    if source is None or not re.search(rf"\b{re.escape(op_name(node))}\s*\(", source):
        return found  # the trace stops at a caller (torch.export records module forwards only): not known
    return [k for k in found if re.search(rf"\b{re.escape(k)}\b", source)]


def call_source(node: fx.Node, max_lines: int = 8) -> Optional[str]:
    """The source of the statement that made ``node`` (from its recorded stack trace: the innermost frame
    outside torch, read on until its brackets close), or None when it is not known."""
    trace = node.meta.get("stack_trace")
    if not trace:
        return None
    frames = [(f, int(n)) for f, n in TRACE_FRAME.findall(trace) if "/torch/" not in f.replace("\\", "/")]
    if not frames:
        return None
    filename, line = frames[-1]
    text, depth = "", 0
    for k in range(line, line + max_lines):
        row = linecache.getline(filename, k)
        if not row:
            break
        text += row
        depth += row.count("(") + row.count("[") - row.count(")") - row.count("]")
        if depth <= 0:
            break
    return text or None


def filled(p, node: fx.Node) -> Any:
    """``zeros`` / ``ones`` / ``full`` (and ``new_*``): a dim whose size is a head-count attribute of the module
    that makes it carries fresh ids that shrink with that attribute; every other dim is untracked."""
    from .propagate import ConstPatch

    shape = p.shape(node)
    if shape is None:
        return p.untracked_like(node)
    sizes = _sizes(node)
    if len(sizes) != len(shape):
        return p.untracked_like(node)
    owner_name = p.owner(node)
    dims: List[Optional[np.ndarray]] = []
    for d, size in enumerate(sizes):
        attrs = _head_count_attrs(p, node, size) if type(size) is int and size > 1 and size == shape[d] else []
        if not attrs:
            dims.append(None)
            continue
        ids = p.ids.new(size, f"{node.name}:{owner_name}.{attrs[0]}")
        for attr in attrs:
            p.result.patches.append(ConstPatch(owner_name, attr, ids))
        dims.append(ids)
    return Layout(dims)


filled.from_sizes = True  # the propagator runs it although no input carries channels

register_op(torch.zeros, torch.ones, torch.full, "new_zeros", "new_ones", "new_full",
            *_ops("zeros", "ones", "full", "new_zeros", "new_ones", "new_full"))(filled)

# shaped like their input at run time: the pruned model's copy has the pruned input's channels
register_op(torch.zeros_like, torch.ones_like, torch.full_like, torch.empty_like,
            *_ops("zeros_like", "ones_like", "full_like", "empty_like"))(unary)
