"""Bisection for the largest pruning ratio whose accuracy stays within a budget: cached probes, every probe reported."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Dict, List, Optional

from ..errors import ConfigError
from ..schedule.budget import accuracy_drop_points, within_budget

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
    probes: List[Probe]  # every evaluation in the order made
    interrupted: bool = False  # KeyboardInterrupt stopped the search early
    calls: int = 0  # evaluations actually computed (cache hits excluded)


class CachedEvaluator:
    """Wraps ``fn(ratio) -> accuracy | (accuracy, extra_dict)``; repeated ratios (rounded to ``decimals``) are not recomputed."""

    def __init__(self, fn: Callable[[float], object], decimals: int = 6):
        self.fn = fn
        self.decimals = decimals
        self.cache: Dict[float, tuple] = {}
        self.calls = 0

    def __call__(self, ratio: float) -> tuple:
        key = round(float(ratio), self.decimals)
        if key not in self.cache:
            self.calls += 1
            out = self.fn(key)
            acc, extra = (out if isinstance(out, tuple) else (out, {}))
            self.cache[key] = (float(acc), dict(extra))
        return self.cache[key]


def bisect_ratio(evaluate: Callable[[float], object], *, baseline: float, max_drop_points: float,
                 lo: float = 0.0, hi: float = 0.95, tol: float = 0.01, max_probes: int = 12,
                 on_probe: Optional[Callable[[Probe], None]] = None, cache: Optional[CachedEvaluator] = None) -> BisectionResult:
    """Largest ratio in [lo, hi] with ``baseline - evaluate(ratio)`` within ``max_drop_points``, assuming accuracy
    falls monotonically with the ratio.

    ``lo`` is assumed to meet the budget (ratio 0 is the unpruned model). ``hi`` is probed first
    (if it meets the budget the search ends); then the interval is halved until it is narrower
    than ``tol`` or ``max_probes`` evaluations were made. ``evaluate`` may return ``accuracy`` or
    ``(accuracy, extra_dict)``. A KeyboardInterrupt ends the search with the best ratio so far.
    """
    if not 0.0 <= lo < hi <= 1.0:
        raise ConfigError(f"search bounds must satisfy 0 <= lo < hi <= 1, got lo={lo}, hi={hi}")
    if tol <= 0 or max_probes < 1:
        raise ConfigError(f"search needs tol > 0 and max_probes >= 1, got tol={tol}, max_probes={max_probes}")
    ev = cache or CachedEvaluator(evaluate)
    calls_before = ev.calls
    probes: List[Probe] = []
    best: Optional[Probe] = None
    good, bad = lo, hi

    def probe(r: float) -> Probe:
        acc, extra = ev(r)
        p = Probe(ratio=round(r, ev.decimals), accuracy=acc, drop_points=accuracy_drop_points(baseline, acc),
                  ok=within_budget(baseline, acc, max_drop_points), index=len(probes), extra=extra)
        probes.append(p)
        log.info("probe ratio=%.4f accuracy=%.4f drop=%.3f points ok=%s", p.ratio, acc, p.drop_points, p.ok)
        if on_probe is not None:
            on_probe(p)
        return p

    try:
        first = probe(hi)
        if first.ok:
            return BisectionResult(hi, first, probes, calls=ev.calls - calls_before)
        while bad - good > tol and len(probes) < max_probes:
            mid = (good + bad) / 2.0
            p = probe(mid)
            if p.ok:
                good, best = mid, p
            else:
                bad = mid
    except KeyboardInterrupt:
        log.warning("search interrupted after %d probes; best ratio so far %.4f", len(probes), good)
        return BisectionResult(good, best, probes, interrupted=True, calls=ev.calls - calls_before)
    return BisectionResult(good, best, probes, calls=ev.calls - calls_before)
