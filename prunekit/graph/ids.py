"""Channel ids: every channel a layer produces gets an integer id; coupled channels are merged (union-find)."""
from __future__ import annotations

from typing import Dict, List, Optional

import numpy as np


class ChannelIds:
    """Union-find over channel ids, plus a coarser union-find over *spaces* (the id blocks layers allocate).

    Two ids merged by :meth:`union` are one *atom*: they must be removed together. Two spaces
    touched by a union form one *group*: they are scored and chosen together. An atom can
    be frozen with a reason (it reaches the output, an unknown op reads it...): it is never removed.
    """

    def __init__(self) -> None:
        self._parent: List[int] = []
        self._space_of: List[int] = []
        self._space_parent: List[int] = []
        self.space_origin: List[str] = []  # who allocated each space (for messages)
        self._frozen: Dict[int, str] = {}  # id (not necessarily root) -> reason
        self._root_cache: Optional[np.ndarray] = None  # root of every id, rebuilt after a union
        self._space_cache: Optional[np.ndarray] = None  # group (space component) of every id

    def __len__(self) -> int:
        return len(self._parent)

    def new(self, n: int, origin: str) -> np.ndarray:
        """Allocate ``n`` fresh ids in a new space."""
        start = len(self._parent)
        space = len(self._space_parent)
        self._space_parent.append(space)
        self.space_origin.append(origin)
        self._parent.extend(range(start, start + n))
        self._space_of.extend([space] * n)
        return np.arange(start, start + n, dtype=np.int64)

    def find(self, i: int) -> int:
        parent = self._parent
        root = i
        while parent[root] != root:
            root = parent[root]
        while parent[i] != root:
            parent[i], i = root, parent[i]
        return root

    def roots(self, ids: np.ndarray) -> np.ndarray:
        if self._root_cache is None or len(self._root_cache) != len(self._parent):
            self._root_cache = _resolve(np.asarray(self._parent, dtype=np.int64))
        return self._root_cache[np.asarray(ids, dtype=np.int64)]

    def spaces(self, ids: np.ndarray) -> np.ndarray:
        """Group (space component) of each id, vectorised."""
        if self._space_cache is None or len(self._space_cache) != len(self._parent):
            comp = _resolve(np.asarray(self._space_parent, dtype=np.int64))
            self._space_cache = comp[np.asarray(self._space_of, dtype=np.int64)]
        return self._space_cache[np.asarray(ids, dtype=np.int64)]

    def _find_space(self, s: int) -> int:
        sp = self._space_parent
        while sp[s] != s:
            sp[s] = sp[sp[s]]
            s = sp[s]
        return s

    def space(self, i: int) -> int:
        """The group (space component) id ``i`` belongs to."""
        return self._find_space(self._space_of[int(i)])

    def union(self, a: np.ndarray, b: np.ndarray) -> None:
        """Merge ids position-wise (``a[k]`` with ``b[k]``)."""
        self._root_cache = self._space_cache = None
        for x, y in zip(a.tolist(), b.tolist()):
            rx, ry = self.find(x), self.find(y)
            if rx != ry:
                self._parent[max(rx, ry)] = min(rx, ry)
            sx, sy = self._find_space(self._space_of[x]), self._find_space(self._space_of[y])
            if sx != sy:
                self._space_parent[max(sx, sy)] = min(sx, sy)

    def union_blocks(self, ids: np.ndarray, block: int) -> None:
        """Merge every run of ``block`` consecutive ids into one atom (whole heads, whole norm groups)."""
        for start in range(0, len(ids), block):
            chunk = ids[start:start + block]
            self.union(np.repeat(chunk[:1], len(chunk) - 1), chunk[1:])

    def freeze(self, ids: Optional[np.ndarray], reason: str) -> None:
        if ids is None:
            return
        for i in ids.tolist():
            self._frozen.setdefault(int(i), reason)

    def frozen_roots(self) -> Dict[int, str]:
        """Root id -> the first reason one of its ids was frozen."""
        out: Dict[int, str] = {}
        for i, reason in self._frozen.items():
            out.setdefault(self.find(i), reason)
        return out


def _resolve(parent: np.ndarray) -> np.ndarray:
    """Root of every node of a parent-pointer forest (pointer jumping)."""
    while True:
        nxt = parent[parent]
        if np.array_equal(nxt, parent):
            return parent
        parent = nxt
