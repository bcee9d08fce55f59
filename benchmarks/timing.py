"""Side-by-side latency for the benchmarks: every variant timed in the same shuffled, interleaved rounds.

Background load on a shared machine hits all variants alike, so their ratios are meaningful even when the
absolute times drift. ``torch.set_num_threads`` is set per run and restored; OMP_WAIT_POLICY=PASSIVE is
recommended (busy-waiting OpenMP threads made training here about 5x slower under load).
"""
from __future__ import annotations

from typing import Callable, Dict

import torch


def side_by_side(variants: Dict[str, Callable[[], object]], *, rounds: int = 15, warmup: int = 3,
                 threads: int = 1, seed: int = 0) -> Dict[str, float]:
    """Median milliseconds per call of each zero-argument callable, over ``rounds`` shuffled rounds at ``threads``
    threads (restored afterwards): prunekit's own interleaved timer, the one ``prunekit.sparsify`` decides with."""
    from prunekit.sparse import interleaved_median

    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return interleaved_median("benchmark", variants, repeats=rounds, warmup=warmup, seed=seed)
    finally:
        torch.set_num_threads(old)


def verdict(ok: bool) -> str:
    return "met" if ok else "not met"
