"""Timing candidates against each other: interleaved, shuffled rounds and the median (or minimum) per candidate."""
from __future__ import annotations

import math
import random
import statistics
import time
from typing import Any, Callable, Dict, Mapping

import torch

Timer = Callable[..., Dict[str, float]]  # timer(layer_name, {label: fn}) -> {label: milliseconds per call}

TARGET_SAMPLE_S = 5e-4  # a sample calls a fast kernel often enough to last about this long
MAX_CALLS = 200
_STATISTICS = {"median": statistics.median, "min": min}


def interleaved_median(layer: str, candidates: Mapping[str, Callable[[], Any]], *, repeats: int = 15,
                       warmup: int = 3, seed: int = 0, statistic: str = "median") -> Dict[str, float]:
    """Milliseconds per call of each candidate: the median over ``repeats`` rounds (``statistic="min"``: the fastest
    round, the estimate least disturbed by other processes: load only ever adds time).

    Each round calls every candidate once (a sample of several calls for fast kernels, the same number every
    round), in an order shuffled per round, so load from other processes hits all candidates alike. Runs
    under ``torch.inference_mode`` and the current ``torch.get_num_threads()``. ``layer`` only names the row.
    """
    if statistic not in _STATISTICS:
        raise ValueError(f"statistic={statistic!r}: choose one of {sorted(_STATISTICS)}")
    rng = random.Random(f"{seed}:{layer}")
    calls: Dict[str, int] = {}
    with torch.inference_mode():
        for label, fn in candidates.items():
            for _ in range(max(warmup, 1) - 1):
                fn()
            t0 = time.perf_counter()
            fn()
            once = time.perf_counter() - t0
            calls[label] = max(1, min(MAX_CALLS, math.ceil(TARGET_SAMPLE_S / max(once, 1e-7))))
        samples: Dict[str, list] = {label: [] for label in candidates}
        order = list(candidates)
        for _ in range(max(int(repeats), 1)):
            rng.shuffle(order)
            for label in order:
                fn, k = candidates[label], calls[label]
                t0 = time.perf_counter()
                for _ in range(k):
                    fn()
                samples[label].append((time.perf_counter() - t0) / k)
    pick = _STATISTICS[statistic]
    return {label: pick(v) * 1e3 for label, v in samples.items()}
