"""Bisection finds a known threshold on synthetic monotone accuracy curves; probes are cached and reported."""
import math

import pytest

from prunekit.search.bisect import CachedEvaluator, accuracy_drop_points, bisect_ratio


def test_finds_step_threshold_within_tolerance():
    threshold = 0.637
    calls = []

    def acc(r):
        calls.append(r)
        return 0.90 if r <= threshold else 0.80

    res = bisect_ratio(acc, baseline=0.90, max_drop_points=0.5, lo=0.0, hi=0.99, tol=1e-3, max_probes=30)
    assert threshold - 1e-3 <= res.best_ratio <= threshold
    assert res.best is not None and res.best.ok and res.best.ratio == pytest.approx(res.best_ratio)
    assert len(res.probes) == len(calls) == res.calls
    assert all(p.ok == (p.ratio <= threshold) for p in res.probes)  # every probe reported with its verdict
    assert [p.index for p in res.probes] == list(range(len(res.probes)))


def test_finds_continuous_threshold():
    # drop = 10 r^2 points -> budget 0.5 is met up to r = sqrt(0.05)
    res = bisect_ratio(lambda r: 0.95 - 0.1 * r * r, baseline=0.95, max_drop_points=0.5, tol=1e-4, max_probes=40)
    assert res.best_ratio == pytest.approx(math.sqrt(0.05), abs=1e-4)
    assert res.best_ratio <= math.sqrt(0.05) + 1e-12
    assert accuracy_drop_points(0.95, res.best.accuracy) <= 0.5


def test_hi_meeting_budget_ends_search_after_one_probe():
    res = bisect_ratio(lambda r: 0.9, baseline=0.9, max_drop_points=0.1, hi=0.8)
    assert res.best_ratio == 0.8 and len(res.probes) == 1


def test_cache_avoids_recomputation():
    n = []
    ev = CachedEvaluator(lambda r: (n.append(r) or 0.5, {"macs": 10}))
    assert ev(0.3) == (0.5, {"macs": 10})
    ev(0.3000000001)
    assert len(n) == 1 and ev.calls == 1
    res = bisect_ratio(lambda r: 0.5, baseline=0.6, max_drop_points=0.5, hi=0.3, max_probes=3, cache=ev)
    assert res.calls == 2  # 0.3 came from the cache; only new midpoints were computed
    assert res.probes[0].extra == {"macs": 10}


def test_interrupt_returns_best_so_far():
    seen = []

    def acc(r):
        seen.append(r)
        if len(seen) == 4:
            raise KeyboardInterrupt
        return 0.9 if r < 0.3 else 0.5

    res = bisect_ratio(acc, baseline=0.9, max_drop_points=1.0, hi=0.8, tol=1e-3)
    assert res.interrupted
    ok = [p.ratio for p in res.probes if p.ok]
    assert res.best_ratio == max(ok)
