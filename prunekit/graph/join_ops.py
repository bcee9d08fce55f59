"""Channel rules for joining and splitting tensors: cat, stack, split / chunk / unbind."""
from __future__ import annotations

from typing import Any, List, Optional

import numpy as np
import torch
import torch.fx as fx

from .layout import Layout, norm_dim
from .ops import _dim_arg, op_name, register_op


# ---- joining and splitting ----------------------------------------------------------------
@register_op(torch.cat, torch.concat, torch.concatenate)
def cat(p, node: fx.Node) -> Any:
    parts = list(node.args[0])
    out_shape = p.shape(node)
    d = norm_dim(_dim_arg(node, 1, 0), len(out_shape))
    pieces, reps = [], []
    for a in parts:
        if len(p.shape(a)) != len(out_shape):  # torch.cat skips 1-D empty tensors (an empty cache, say)
            continue
        lay = p.value(a)
        ids = lay.dims[d] if lay is not None else None
        if ids is None:  # an untracked slice (model input, opaque op): fixed channels
            ids = p.ids.new(p.shape(a)[d], f"{node.name}:untracked")
            p.ids.freeze(ids, f"concatenated from an untracked tensor in {node.name}")
        pieces.append(ids)
        if lay is not None:
            reps.append(a)
    other = elementwise_excluding(p, node, reps, d)
    other.dims[d] = np.concatenate(pieces)
    return other


def elementwise_excluding(p, node: fx.Node, inputs: List[fx.Node], skip: int) -> Layout:
    """Unify every dim except ``skip`` across inputs of equal rank (cat/stack's other dims)."""
    nd = len(p.shape(node))
    dims: List[Optional[np.ndarray]] = []
    for d in range(nd):
        if d == skip:
            dims.append(None)
            continue
        tracked = [p.value(a).dims[d] for a in inputs if p.value(a).dims[d] is not None]
        plain = any(p.value(a).dims[d] is None and p.shape(a)[d] > 1 for a in inputs)
        for t in tracked[1:]:
            p.ids.union(tracked[0], t)
        if tracked and plain:
            p.ids.freeze(tracked[0], f"joined with an untracked tensor in {node.name}")
        dims.append(tracked[0] if tracked else None)
    return Layout(dims)


@register_op(torch.stack)
def stack(p, node: fx.Node) -> Any:
    parts = [a for a in node.args[0] if isinstance(p.value(a), Layout)]
    nd = len(p.shape(node))
    d = norm_dim(_dim_arg(node, 1, 0), nd)
    base = elementwise_excluding_stack(p, parts, d)
    return base


def elementwise_excluding_stack(p, parts, d) -> Layout:
    first = p.value(parts[0])
    dims = []
    for k in range(first.ndim):
        tracked = [p.value(a).dims[k] for a in parts if p.value(a).dims[k] is not None]
        for t in tracked[1:]:
            p.ids.union(tracked[0], t)
        if tracked and len(tracked) < len(parts):
            p.ids.freeze(tracked[0], "stacked with an untracked tensor")
        dims.append(tracked[0] if tracked else None)
    dims.insert(d, None)
    return Layout(dims)


@register_op(torch.split, torch.chunk, torch.tensor_split, torch.unbind, "split", "chunk", "tensor_split", "unbind")
def split(p, node: fx.Node) -> Any:
    lay = p.value(node.args[0])
    metas = node.meta.get("tensor_meta")
    name = op_name(node)
    default = 0
    d = norm_dim(_dim_arg(node, 1 if name == "unbind" else 2, default), lay.ndim)
    if name == "unbind":
        p.ids.freeze(lay.dims[d], f"unbind along a channel dim ({node.name})")
        return tuple(Layout(lay.dims[:d] + lay.dims[d + 1:]) for _ in metas)
    ids = lay.dims[d]
    if ids is not None:
        sizes = [m.shape[d] for m in metas]
        spelled = name in ("split", "tensor_split") and isinstance(node.args[1] if len(node.args) > 1 else None, (list, tuple))
        size_arg = node.args[1] if len(node.args) > 1 else node.kwargs.get("split_size_or_sections",
                                                                            node.kwargs.get("split_size"))
        if (name == "split" and type(size_arg) is int and len(sizes) > 1 and len(set(sizes)) == 1
                and not getattr(p.captured, "exported", False) and not _split_size_patched(p, node, size_arg, ids)):
            # nanoGPT's `q, k, v = self.c_attn(x).split(self.n_embd, dim=2)` reads an int the graph bakes in:
            # without an attribute holding it, the pruned model would split at the old size
            p.ids.freeze(ids, f"split size {size_arg} is hard-coded in {p.owner(node) or 'forward'} ({node.name}); "
                              "store it in an int attribute of that module (e.g. self.split_size) so it can be updated")
        elif spelled or len(set(sizes)) > 1:
            p.ids.freeze(ids, f"split into spelled-out sizes {sizes} along a channel dim ({node.name})")
        elif len(sizes) > 1 and _chunks_share_atoms(p, ids.reshape(len(sizes), -1)):
            # an atom with positions in several chunks but not the same in all (a channel shuffle's columns
            # coupled along a ShuffleNet stage): no removal keeps the chunks equal, so these channels stay
            p.ids.freeze(ids, f"chunks of {node.name} share channels unevenly")
        elif len(sizes) > 1:
            p.result.divisions.append(ids.reshape(len(sizes), -1))  # equal chunks must stay equal
    outs, start = [], 0
    for m in metas:
        size = m.shape[d]
        ids = lay.dims[d]
        outs.append(lay.with_dim(d, None if ids is None else ids[start:start + size]))
        start += size
    return tuple(outs)


def _split_size_patched(p, node: fx.Node, size: int, ids: np.ndarray) -> bool:
    """The split size is an int attribute of the module that splits (one chunk's width): record it for update."""
    from .propagate import ConstPatch

    owner_name = p.owner(node)
    owner = p.modules.get(owner_name)
    attrs = [k for k, v in vars(owner).items() if type(v) is int and v == size and not k.startswith("_")] \
        if owner is not None else []
    for attr in attrs:
        p.result.patches.append(ConstPatch(owner_name, attr, ids[:size]))
    return bool(attrs)


def _chunks_share_atoms(p, rows: np.ndarray) -> bool:
    """Whether equal chunks hold overlapping, not identical, sets of atoms (then no removal keeps them equal)."""
    sets = [frozenset(p.ids.roots(r).tolist()) for r in rows]
    if all(s == sets[0] for s in sets[1:]):
        return False
    return len(frozenset().union(*sets)) < sum(len(s) for s in sets)
