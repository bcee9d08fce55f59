"""view / reshape / flatten rule: follow channel ids through merged and split dims; whole heads on a split."""
from __future__ import annotations

import re
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np
import torch.fx as fx

from .layout import Layout

HEAD_NAME = re.compile(r"head", re.I)


def dim_groups(a: Sequence[int], b: Sequence[int]) -> List[Tuple[List[int], List[int]]]:
    """Pair runs of input dims with runs of output dims of equal element count (the reshape's structure)."""
    res: List[Tuple[List[int], List[int]]] = []
    i = j = 0
    while i < len(a) and j < len(b):
        ii, jj, pa, pb = i + 1, j + 1, a[i], b[j]
        while pa != pb:
            if pa < pb:
                pa *= a[ii]
                ii += 1
            else:
                pb *= b[jj]
                jj += 1
        res.append((list(range(i, ii)), list(range(j, jj))))
        i, j = ii, jj
    if res:
        res[-1][0].extend(range(i, len(a)))
        res[-1][1].extend(range(j, len(b)))
    return res


def reshape_rule(p, node: fx.Node) -> Any:
    src = node.args[0]
    lay, in_shape, out_shape = p.value(src), p.shape(src), p.shape(node)
    if out_shape is None or 0 in in_shape:
        p.freeze_value(lay, f"unsupported reshape {node.name}")
        return p.untracked_like(node)
    out: List[Optional[np.ndarray]] = [None] * len(out_shape)
    literals = _shape_literals(node, len(out_shape))
    for ins, outs in dim_groups(in_shape, out_shape):
        tracked = [d for d in ins if lay.dims[d] is not None]
        if not tracked:
            continue
        if len(tracked) > 1:
            p.freeze_all([lay.dims[d] for d in tracked], f"reshape {node.name} merges two channel dims")
            continue
        grid = _id_grid(lay, ins, tracked[0], in_shape)
        sizes = [out_shape[d] for d in outs]
        grid = grid.reshape(sizes)
        shuffled = _shuffle_carrier(p, node, grid, outs, [literals[d] for d in outs])
        k, ids, heads = shuffled if shuffled is not None else _carrier(p, grid)
        out[outs[k]] = ids
        _check_literal(p, node, literals[outs[k]], ids, head=heads)
    return Layout(out)


def _id_grid(lay: Layout, ins: List[int], t: int, in_shape) -> np.ndarray:
    shape = [in_shape[d] for d in ins]
    view = [1] * len(ins)
    view[ins.index(t)] = in_shape[t]
    return np.broadcast_to(lay.dims[t].reshape(view), shape).reshape(-1)


def _carrier(p, grid: np.ndarray) -> Tuple[int, np.ndarray, bool]:
    """The output dim that carries the channels; a split of channels into (heads, head_dim) merges each head."""
    nontrivial = [d for d in range(grid.ndim) if grid.shape[d] > 1]
    if not nontrivial:
        return 0, grid.reshape(-1)[:1], False
    for d in nontrivial:
        moved = np.moveaxis(grid, d, 0).reshape(grid.shape[d], -1)
        if (moved == moved[:, :1]).all():
            return d, moved[:, 0].copy(), False
    d = nontrivial[0]  # (heads, head_dim): every head becomes one atom, removed whole
    moved = np.moveaxis(grid, d, 0).reshape(grid.shape[d], -1)
    for row in moved:
        p.ids.union(np.repeat(row[:1], len(row) - 1), row[1:])
    return d, moved[:, 0].copy(), True


# ---- channel shuffle: split (groups, c/groups), transpose, flatten again (ShuffleNet) -------------------
PASS_THROUGH = {"contiguous", "clone", "detach", "alias"}  # value-preserving ops a shuffle may run through
PERMUTES = {"permute", "transpose", "swapaxes", "movedim", "t", "mT"}
MERGES = {"view", "reshape", "_unsafe_view", "flatten"}
SHAPE_USES = {"size", "dim", "numel", "shape", "dtype", "device", "ndim", "is_contiguous", "getattr"}


def _shuffle_carrier(p, node: fx.Node, grid: np.ndarray, outs: List[int], literals: List[Optional[int]]):
    """A channel dim split into two axes that a later transpose + flatten merges back in swapped order is a
    channel shuffle: the channels are permuted, not cut into heads. The pruned model splits its own (smaller)
    channel count into the same number of rows, so the kept positions must form whole columns: the rows
    (groups) stay, and the i-th position of every row is one atom (removed from every group together).
    Returns ``(axis, ids, False)`` like :func:`_carrier`, or None when the split is not a shuffle."""
    nontrivial = [d for d in range(grid.ndim) if grid.shape[d] > 1]
    if len(nontrivial) != 2 or not _merged_swapped(p, node, [outs[d] for d in nontrivial]):
        return None
    rows, cols = nontrivial
    if literals[cols] is not None and literals[rows] is None:  # view(b, c // g, g, ...): the spelled-out g stays
        rows, cols = cols, rows
    moved = np.moveaxis(grid, cols, -1).reshape(-1, grid.shape[cols])  # one line per group
    for line in moved[1:]:
        p.ids.union(moved[0], line)
    return cols, moved[0].copy(), False


def _merged_swapped(p, node: fx.Node, where: List[int]) -> bool:
    """Whether the split dims ``where`` (output dims of ``node``, in split order) are merged back into one dim
    in the opposite order, through only permutes and copies, with no other use of the split value."""
    from .ops import op_name

    cur = node
    for _ in range(8):
        users = [u for u in cur.users if op_name(u) not in SHAPE_USES and not _is_getattr(u)]
        if len(users) != 1:
            return False
        cur = users[0]
        name = op_name(cur)
        if name in PASS_THROUGH:
            continue
        if name in PERMUTES:
            perm = _permutation(cur, len(p.shape(cur.args[0]) or ()))
            if perm is None:
                return False
            where = [perm.index(w) for w in where]
            continue
        if name in MERGES:
            in_shape, merged = p.shape(cur.args[0]), p.shape(cur)
            if in_shape is None or merged is None:
                return False
            for ins, outs in dim_groups(in_shape, merged):
                if set(where) <= set(ins):
                    big = [d for d in ins if in_shape[d] > 1]
                    return len(outs) == 1 and big == sorted(where) and where[0] > where[1]
            return False
        return False
    return False


def _is_getattr(node: fx.Node) -> bool:
    import builtins

    return node.op == "call_function" and node.target is builtins.getattr


def _permutation(node: fx.Node, n: int) -> Optional[List[int]]:
    """The dim order a permute / transpose / movedim node produces (output dim i reads input dim perm[i])."""
    from .ops import op_name

    name = op_name(node)
    rest = list(node.args[1:])
    try:
        if name == "permute":
            perm = rest[0] if len(rest) == 1 and isinstance(rest[0], (tuple, list)) else rest
            perm = [d + n if d < 0 else d for d in node.kwargs.get("dims", perm)]
        elif name in ("transpose", "swapaxes", "t", "mT"):
            a, b = (rest + [n - 2, n - 1])[:2] if name != "t" else (0, 1)
            a, b = (a + n if a < 0 else a), (b + n if b < 0 else b)
            perm = list(range(n))
            perm[a], perm[b] = perm[b], perm[a]
        else:
            src, dst = [d + n if d < 0 else d for d in rest[:2]]
            perm = list(range(n))
            perm.insert(dst, perm.pop(src))
    except (TypeError, IndexError, ValueError):
        return None
    if sorted(perm) != list(range(n)) or not all(isinstance(d, int) for d in perm):
        return None
    return list(perm)


def _shape_literals(node: fx.Node, n: int) -> List[Optional[int]]:
    """The ints a view/reshape call spells out per output dim (None: computed at run time, -1 or not a view)."""
    from .ops import op_name

    if op_name(node) not in ("view", "reshape", "_unsafe_view"):
        return [None] * n
    args = list(node.args[1:]) or list(node.kwargs.get("shape", ()))
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = list(args[0])
    if len(args) != n:
        return [None] * n
    return [a if isinstance(a, int) and not isinstance(a, bool) and a != -1 else None for a in args]


def _check_literal(p, node: fx.Node, value: Optional[int], ids: np.ndarray, head: bool) -> None:
    """A spelled-out size of a channel dim must come from an attribute we can update, else the channels are frozen."""
    if value is None:
        return
    exported = getattr(p.captured, "exported", False)  # export spells out every size: only heads can be checked
    if exported and not head:
        return
    owner_name = p.owner(node)
    owner = p.modules.get(owner_name)
    attrs = {k: v for k, v in vars(owner).items() if type(v) is int and not k.startswith("_")} if owner is not None else {}
    exact = [k for k, v in attrs.items() if v == value]
    if head:
        exact = [k for k in exact if HEAD_NAME.search(k) and not re.search(r"dim|size", k, re.I)] or []
    if exact:
        for attr in exact:
            p.result.patches.append(_patch(owner_name, attr, ids))
        return
    heads = [k for k, v in attrs.items() if HEAD_NAME.search(k) and not re.search(r"dim|size", k, re.I)]
    for h in heads:
        for k, v in attrs.items():
            if k != h and attrs[h] * v == value:
                p.result.derived_literals.append((ids, f"{owner_name}.{h}*{k}"))
                return
    if exported:
        return
    p.ids.freeze(ids, f"hard-coded reshape constant {value} in {owner_name or 'forward'} ({node.name}); "
                      "store it in an int attribute (e.g. self.num_heads) so it can be updated")


def _patch(module: str, attr: str, ids: np.ndarray):
    from .propagate import ConstPatch

    return ConstPatch(module, attr, ids)
