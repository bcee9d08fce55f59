"""Bisection for the largest pruning ratio whose accuracy stays within a budget: cached probes, every probe reported."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from collections import deque
from typing import Callable, Dict, List, Optional

from ..errors import ConfigError
from ..schedule.budget import accuracy_drop_points, within_budget
from . import shard

log = logging.getLogger(__name__)


@dataclass
class Probe:
    """One evaluated setting: the ratio tried, the metric it scored, and whether it met the budget."""

    ratio: float
    accuracy: float
    drop_points: float
    ok: bool
    index: int  # order in which it was evaluated (0 = first)
    extra: dict = field(default_factory=dict)  # params / MACs / latency etc. from the evaluator

    def as_dict(self) -> dict:
        return {"ratio": self.ratio, "accuracy": self.accuracy, "drop_points": self.drop_points, "ok": self.ok,
                "index": self.index, **self.extra}


@dataclass
class BisectionResult:
    best_ratio: float  # largest ratio found that meets the budget (lo if none did)
    best: Optional[Probe]  # the probe at best_ratio (None if only the lower bound, never evaluated, is known)
    probes: List[Probe]  # every probe of the search path, in the order made (the same in one process or many)
    interrupted: bool = False  # KeyboardInterrupt stopped the search early
    calls: int = 0  # evaluations actually computed (cache hits excluded; speculative ones included)
    speculative: List[Probe] = field(default_factory=list)  # evaluated in parallel but off the path (index -1)


class CachedEvaluator:
    """Wraps ``fn(ratio) -> accuracy | (accuracy, extra_dict)``; repeated ratios (rounded to ``decimals``) are not recomputed."""

    def __init__(self, fn: Callable[[float], object], decimals: int = 6):
        self.fn = fn
        self.decimals = decimals
        self.cache: Dict[float, tuple] = {}
        self.calls = 0

    def key(self, ratio: float) -> float:
        return round(float(ratio), self.decimals)

    def compute(self, key: float) -> list:
        """``[accuracy, extra]`` of ``fn(key)``, uncached (what a rank sends the others)."""
        out = self.fn(key)
        acc, extra = (out if isinstance(out, tuple) else (out, {}))
        return [float(acc), dict(extra)]

    def store(self, key: float, value) -> None:
        self.calls += 1
        self.cache[key] = (float(value[0]), dict(value[1]))

    def __call__(self, ratio: float) -> tuple:
        key = self.key(ratio)
        if key not in self.cache:
            self.store(key, self.compute(key))
        return self.cache[key]


@dataclass
class _Node:
    """A probe the bisection would make: its ratio, the bracket it splits, how many probes precede it."""

    ratio: float
    good: float
    bad: float
    depth: int
    first: bool = False  # the probe of ``hi`` that opens the search


def bisect_ratio(evaluate: Callable[[float], object], *, baseline: float, max_drop_points: float,
                 lo: float = 0.0, hi: float = 0.95, tol: float = 0.01, max_probes: int = 12,
                 on_probe: Optional[Callable[[Probe], None]] = None, cache: Optional[CachedEvaluator] = None,
                 width: Optional[int] = None, seed: Optional[int] = None) -> BisectionResult:
    """Largest ratio in [lo, hi] with ``baseline - evaluate(ratio)`` within ``max_drop_points``, assuming accuracy
    falls monotonically with the ratio.

    ``lo`` is assumed to meet the budget (ratio 0 is the unpruned model). ``hi`` is probed first
    (if it meets the budget the search ends); then the interval is halved until it is narrower
    than ``tol`` or ``max_probes`` evaluations were made. ``evaluate`` may return ``accuracy`` or
    ``(accuracy, extra_dict)`` (JSON data). A KeyboardInterrupt ends the search with the best ratio so far.

    Each round evaluates up to ``width`` ratios at once (default: one per rank of the torchrun job, 1 in one
    process), spread over the ranks: the next probe of the bisection and, speculatively, the probes it would
    make after it whichever way it goes (its decision tree, breadth first, the branch taken when a probe meets
    the budget first); the search then walks the tree as far as the results reach. With 3 ranks a round
    probes the quarter, half and three-quarter points of the bracket and advances two steps; with N ranks
    about log2(N + 1). The walked probes are exactly those one process makes (each probe seeded by its ratio,
    so it scores the same wherever it runs): ``probes``, ``best_ratio`` and ``best`` equal the one-process
    result; evaluations off the path are in ``speculative``. The probe at ratio r runs with the torch RNG seeded
    by ``shard.probe_seed(seed, r)`` (``seed``: by default one draw of the global RNG, rank 0's).
    """
    if not 0.0 <= lo < hi <= 1.0:
        raise ConfigError(f"search bounds must satisfy 0 <= lo < hi <= 1, got lo={lo}, hi={hi}")
    if tol <= 0 or max_probes < 1:
        raise ConfigError(f"search needs tol > 0 and max_probes >= 1, got tol={tol}, max_probes={max_probes}")
    if width is not None and int(width) < 1:
        raise ConfigError(f"search width must be >= 1 probes a round, got {width}")
    ev = cache or CachedEvaluator(evaluate)
    width = int(width) if width is not None else shard.world()[1]
    calls_before = ev.calls
    base = shard.sweep_seed() if seed is None else int(seed)
    walk = _Walk(ev, lo, hi, tol, max_probes, baseline, max_drop_points, on_probe)
    computed: List[float] = []
    try:
        while not walk.advance():
            todo = _plan(walk.next_node(), width, ev, tol, max_probes)

            def store(i: int, value, todo=todo) -> None:
                ev.store(todo[i], value)
                computed.append(todo[i])

            shard.map_sharded(ev.compute, todo, seeds=[shard.probe_seed(base, k) for k in todo], on_result=store)
    except KeyboardInterrupt:
        walk.advance()  # what finished before the interrupt still counts
        log.warning("search interrupted after %d probes; best ratio so far %.4f", len(walk.probes), walk.result_ratio())
        walk.interrupted = True
    walked = {p.ratio for p in walk.probes}
    speculative = [walk.make_probe(k, index=-1) for k in computed if k not in walked]
    return BisectionResult(walk.result_ratio(), walk.best, walk.probes, interrupted=walk.interrupted,
                           calls=ev.calls - calls_before, speculative=speculative)


class _Walk:
    """The bisection's state; :meth:`advance` makes every probe whose result is already known."""

    def __init__(self, ev, lo, hi, tol, max_probes, baseline, max_drop_points, on_probe):
        self.ev, self.hi, self.tol, self.max_probes = ev, hi, tol, max_probes
        self.baseline, self.max_drop_points, self.on_probe = baseline, max_drop_points, on_probe
        self.good, self.bad = lo, hi
        self.probes: List[Probe] = []
        self.best: Optional[Probe] = None
        self.hi_ok = False
        self.interrupted = False

    def next_node(self) -> Optional[_Node]:
        if not self.probes:
            return _Node(self.hi, self.good, self.bad, 0, first=True)
        if self.hi_ok:
            return None
        return _mid(self.good, self.bad, len(self.probes), self.tol, self.max_probes)

    def make_probe(self, key: float, index: int) -> Probe:
        acc, extra = self.ev.cache[key]
        return Probe(ratio=key, accuracy=acc, drop_points=accuracy_drop_points(self.baseline, acc),
                     ok=within_budget(self.baseline, acc, self.max_drop_points), index=index, extra=extra)

    def advance(self) -> bool:
        """Walk while the next probe's result is cached; True when the search is over."""
        while True:
            node = self.next_node()
            if node is None:
                return True
            key = self.ev.key(node.ratio)
            if key not in self.ev.cache:
                return False
            p = self.make_probe(key, index=len(self.probes))
            self.probes.append(p)
            log.info("probe ratio=%.4f accuracy=%.4f drop=%.3f points ok=%s", p.ratio, p.accuracy, p.drop_points, p.ok)
            if self.on_probe is not None:
                self.on_probe(p)
            if node.first:
                self.hi_ok = p.ok
                if p.ok:
                    self.best = p
            elif p.ok:
                self.good, self.best = node.ratio, p
            else:
                self.bad = node.ratio

    def result_ratio(self) -> float:
        return self.hi if self.hi_ok else self.good


def _mid(good: float, bad: float, depth: int, tol: float, max_probes: int) -> Optional[_Node]:
    """The probe the bisection makes at bracket (good, bad) after ``depth`` probes, or None when it stops there."""
    if bad - good > tol and depth < max_probes:
        return _Node((good + bad) / 2.0, good, bad, depth)
    return None


def _plan(root: _Node, width: int, ev: CachedEvaluator, tol: float, max_probes: int) -> List[float]:
    """Up to ``width`` uncached ratios: ``root`` and the probes that may follow it, breadth first."""
    todo: List[float] = []
    queue = deque([root])
    while queue and len(todo) < width:
        node = queue.popleft()
        key = ev.key(node.ratio)
        if key not in ev.cache and key not in todo:
            todo.append(key)
        if node.first:  # hi meeting the budget ends the search; failing it opens the bracket [lo, hi]
            follow = [_mid(node.good, node.ratio, node.depth + 1, tol, max_probes)]
        else:  # meets the budget: bracket (ratio, bad); misses it: (good, ratio)
            follow = [_mid(node.ratio, node.bad, node.depth + 1, tol, max_probes),
                      _mid(node.good, node.ratio, node.depth + 1, tol, max_probes)]
        queue.extend(n for n in follow if n is not None)
    return todo
