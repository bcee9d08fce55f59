"""Side-by-side latency for the benchmarks: every variant timed in the same shuffled, interleaved rounds.

Background load on a shared machine hits all variants alike, so their ratios are meaningful even when the
absolute times drift. ``torch.set_num_threads`` is set per run and restored; OMP_WAIT_POLICY=PASSIVE is
recommended (busy-waiting OpenMP threads made training here about 5x slower under load).
"""
from __future__ import annotations

import random
import statistics
import time
from typing import Callable, Dict, Sequence

import torch


def side_by_side(variants: Dict[str, Callable[[], object]], *, rounds: int = 15, warmup: int = 3,
                 threads: int = 1, seed: int = 0, inner: int = 1) -> Dict[str, float]:
    """Median milliseconds per call of each zero-argument callable, over ``rounds`` shuffled rounds.

    Each round runs every variant once (``inner`` calls, averaged) in a fresh random order.
    """
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    rng = random.Random(seed)
    names = list(variants)
    times: Dict[str, list] = {n: [] for n in names}
    try:
        with torch.inference_mode():
            for _ in range(warmup):
                for n in names:
                    variants[n]()
            for _ in range(rounds):
                rng.shuffle(names)
                for n in names:
                    t = time.perf_counter()
                    for _ in range(inner):
                        variants[n]()
                    times[n].append((time.perf_counter() - t) * 1e3 / inner)
    finally:
        torch.set_num_threads(old)
    return {n: statistics.median(v) for n, v in times.items()}


def verdict(ok: bool) -> str:
    return "met" if ok else "not met"


def fmt_table(rows: Sequence[Sequence[object]], header: Sequence[str]) -> str:
    cells = [[str(c) for c in header]] + [[str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    line = lambda r: "  ".join(c.ljust(w) for c, w in zip(r, widths))  # noqa: E731
    return "\n".join([line(cells[0]), line(["-" * w for w in widths])] + [line(r) for r in cells[1:]])
