"""Measuring a latency-targeted prune: the pruned model against its prediction, and the allocation checked on the
real pruned model and re-aimed where the latency table was wrong (:mod:`.latency` allocates)."""
from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..errors import BudgetError
from .latency_timing import held_chunks

log = logging.getLogger(__name__)


def _module_inputs(model, inputs, names, *, sizes_only: bool = False) -> Dict[str, Any]:
    """The first input tensor of each module of ``names`` on ``inputs`` (its size in bytes with ``sizes_only``)."""
    from .._inputs import run_model

    out: Dict[str, Any] = {}

    def keep(mod, args, _n):
        x = args[0]
        out.setdefault(_n, x.numel() * x.element_size() if sizes_only else x.detach().clone())

    handles = [model.get_submodule(n).register_forward_pre_hook(lambda mod, args, _n=n: keep(mod, args, _n))
               for n in names]
    try:
        run_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    return out


def measure_pruned(model, example_inputs, latency: Dict[str, Any], timer: Optional[Callable] = None,
                   dense=None) -> Dict[str, Any]:
    """Measure the pruned ``model`` (whole, and each layer the table predicted, on its real input) under the plan's
    conditions; adds ``measured_ms`` and ``error`` to ``latency`` and records it on the model
    (:func:`latency_report`). Returns ``latency``.

    With the ``dense`` model, it is timed in the same rounds: ``measured_dense_ms``, ``measured_fraction`` (pruned /
    dense) and ``error`` = predicted fraction / measured fraction - 1, which load from other processes does not
    skew; without it ``error`` = predicted / measured ms - 1 (the table's dense time may be from another moment)."""
    import functools

    import torch

    from .._inputs import run_model, with_batch_size
    from ..measure.latency import eval_state, num_threads
    from ..sparse.timing import interleaved_median
    from .plan import get_plan

    timer = timer or functools.partial(interleaved_median, repeats=9, warmup=2, statistic="min")  # as the table
    inputs = with_batch_size(example_inputs, latency["batch"])
    order = list(dict.fromkeys(row["module"] for row in latency["layers"].values()))
    with eval_state(model), num_threads(latency["threads"]), torch.no_grad():
        # the whole models first, with no layer input held (:func:`~.latency_timing.held_chunks` says why)
        calls = {"model": lambda: run_model(model, inputs)}
        if dense is not None:
            calls["dense"] = lambda: run_model(dense, inputs)
        with eval_state(dense) if dense is not None else contextlib.nullcontext():
            whole_ms = timer("pruned and dense model", calls)
        whole, dense_ms = whole_ms["model"], whole_ms.get("dense")
        per_layer: Dict[str, float] = {}
        sizes = _module_inputs(model, inputs, order, sizes_only=True)
        for chunk in held_chunks(order, sizes):
            recorded = _module_inputs(model, inputs, chunk)
            per_layer.update(timer("pruned model's layers", {n: (lambda m=model.get_submodule(n), x=x: m(x))
                                                               for n, x in recorded.items()}))
            del recorded
    seen = set()
    for row in latency["layers"].values():
        if row["module"] in per_layer and row["module"] not in seen:  # a module called twice: its first call
            seen.add(row["module"])
            row["measured_ms"] = float(per_layer[row["module"]])
    latency["measured_ms"] = float(whole)
    latency["error"] = float(latency["predicted_ms"] / whole - 1.0) if whole > 0 else None
    if dense_ms:
        latency["measured_dense_ms"] = float(dense_ms)
        latency["measured_fraction"] = float(whole / dense_ms)
        latency["error"] = float((latency["predicted_ms"] / latency["dense_ms"]) / (whole / dense_ms) - 1.0)
    plan = get_plan(model)
    if plan:
        steps = plan.get("steps", [plan])
        steps[-1]["latency"] = latency
    log.info("latency: predicted %.4g ms, measured %.4g ms (prediction error %+.1f%%)", latency["predicted_ms"],
             whole, 100 * (latency["error"] or 0.0))
    return latency


# --- measured corrections: the pruned model timed against the dense one, the allocation re-aimed --------------

TOLERANCE = 0.05  # a measured fraction at most 5% under the target (and not over it) is taken as met
CHECKS = 2  # default latency_checks: re-allocations after the first one
MAX_STEP = 1.25  # one correction moves the aim by at most this factor
BUDGET_S = 20.0  # a check's rounds are cut (to 5 at least) so they take about this long


def measured_fraction(dense, pruned, example_inputs, batch: int, threads: int, rounds: int = 15,
                      seed: int = 0) -> Dict[str, float]:
    """``{"dense_ms", "pruned_ms", "fraction", "spread"}``: the pruned model's latency as a fraction of the dense
    model's, the median over ``rounds`` of the ratio within one round (both models called back to back, in a
    shuffled order, so load from other processes hits the pair alike) at ``batch`` and ``threads``; ``spread`` is
    the interquartile range of those ratios over their median, ``stderr`` the median's standard error relative to
    it (how far one measurement can be trusted)."""
    import random
    import time

    import torch

    from .._inputs import run_model, with_batch_size
    from ..measure.latency import eval_state, num_threads

    inputs = with_batch_size(example_inputs, batch)
    rng = random.Random(seed)
    calls = {"dense": lambda: run_model(dense, inputs), "pruned": lambda: run_model(pruned, inputs)}
    times: Dict[str, List[float]] = {"dense": [], "pruned": []}
    with eval_state(dense), eval_state(pruned), num_threads(threads), torch.inference_mode():
        for fn in calls.values():  # warm-up
            fn()
        t0 = time.perf_counter()
        calls["dense"]()
        once = time.perf_counter() - t0
        rounds = max(5, min(rounds, int(BUDGET_S / max(2 * once, 1e-9))))  # a large model: fewer rounds
        for _ in range(rounds):
            order = list(calls)
            rng.shuffle(order)
            for label in order:
                t0 = time.perf_counter()
                calls[label]()
                times[label].append(time.perf_counter() - t0)
    ratios = np.array(times["pruned"]) / np.maximum(np.array(times["dense"]), 1e-12)
    q1, med, q3 = np.percentile(ratios, [25, 50, 75])
    spread = float((q3 - q1) / med) if med > 0 else 0.0
    return {"dense_ms": float(np.median(times["dense"]) * 1e3), "pruned_ms": float(np.median(times["pruned"]) * 1e3),
            "fraction": float(med), "spread": spread, "rounds": rounds,
            # the median's standard error relative to it: IQR / 1.35 estimates the spread's sigma, x 1.25 / sqrt(n)
            "stderr": 1.25 * spread / 1.35 / math.sqrt(rounds)}


def _next_aim(tries: List[Dict[str, float]], want: float) -> float:
    """The predicted fraction to aim at next: between the closest tries measured on either side of ``want``, the
    secant through their (predicted, measured) points; with all tries on one side, the nearest one's prediction
    scaled by ``want / measured``, the factor clipped to 1 / :data:`MAX_STEP` .. :data:`MAX_STEP` (one measurement
    on a shared machine can be off by a tenth or more)."""
    below = [t for t in tries if t["measured"] < want]
    above = [t for t in tries if t["measured"] >= want]
    if below and above:
        lo = max(below, key=lambda t: t["measured"])
        hi = min(above, key=lambda t: t["measured"])
        if hi["measured"] > lo["measured"] and hi["predicted"] != lo["predicted"]:
            w = (want - lo["measured"]) / (hi["measured"] - lo["measured"])
            return float(lo["predicted"] + w * (hi["predicted"] - lo["predicted"]))
    near = min(tries, key=lambda t: abs(t["measured"] / want - 1.0))
    return float(near["predicted"] * np.clip(want / near["measured"], 1.0 / MAX_STEP, MAX_STEP))


def meet_measured(dense, example_inputs, removed: Dict[int, np.ndarray], latency: Dict[str, Any],
                  reallocate: Callable[[float], Tuple[Dict[int, np.ndarray], Dict[str, Any]]],
                  build: Callable[[Dict[int, np.ndarray]], Any], checks: int = CHECKS
                  ) -> Tuple[Dict[int, np.ndarray], Dict[str, Any]]:
    """Check the allocation on the real pruned model and re-aim it where the table was wrong (as NetAdapt checks
    each proposal by measuring it).

    ``build(removed)`` returns the pruned model of an allocation; it is timed against ``dense`` in the same rounds
    (:func:`measured_fraction`). The target is a ceiling: a measured fraction of the dense latency in
    ``[target x (1 - TOLERANCE), target]`` is met. Otherwise (slower: the target is missed; much faster: accuracy
    was spent for nothing), unless the miss is within twice the measurement's standard error of the band (the
    measurement cannot tell; re-aiming a 0.501 +- 0.007 for a 0.5 target cost VGG-6 a third more MACs for nothing
    in bench-latency, and the table's allocation stands), the next allocation aims its prediction where
    the measurements put the middle of that band (:func:`_next_aim`: scaled by band / measured, or the secant
    between tries on either side of it): ``reallocate(aim_ms)``, up to ``checks`` times. Of the allocations
    tried, the one kept is the least pruned that measured at or under the target, else the fastest. Every try is
    listed in the report's ``checks`` (aim, predicted and measured fraction, the measurement's standard error).
    """
    want = latency["target_ms"] / latency["dense_ms"]
    centre = want * (1.0 - TOLERANCE / 2)
    tries = []
    current, report_ = removed, latency
    for k in range(checks + 1):
        got = measured_fraction(dense, build(current), example_inputs, latency["batch"], latency["threads"], seed=k)
        predicted = report_["predicted_ms"] / report_["dense_ms"]
        tries.append((current, report_, {"aim": report_["aim_ms"] / report_["dense_ms"], "predicted": predicted,
                                         "measured": got["fraction"], "spread": got["spread"],
                                         "stderr": got["stderr"],
                                         "dense_ms": got["dense_ms"], "pruned_ms": got["pruned_ms"]}))
        log.info("latency check %d: predicted %.3f, measured %.3f of dense (target %.3f)", k, predicted,
                 got["fraction"], want)
        lo, f, noise = want * (1.0 - TOLERANCE), got["fraction"], 2 * got["stderr"]
        met = lo <= f <= want
        unclear = lo * (1.0 - noise) <= f <= want * (1.0 + noise)  # the band, within the measurement's noise
        if met or unclear or k == checks:
            break
        aim = min(_next_aim([t[2] for t in tries], centre), 1.0) * report_["dense_ms"]
        try:
            current, report_ = reallocate(aim)
        except BudgetError:  # the re-aimed target is below what the floors allow: keep what was tried
            break
    meeting = [t for t in tries if t[2]["measured"] <= want]
    chosen = max(meeting, key=lambda t: t[2]["measured"]) if meeting else min(tries, key=lambda t: t[2]["measured"])
    out = dict(chosen[1])
    out["checks"] = [t[2] for t in tries]
    out["measured_fraction"] = chosen[2]["measured"]
    return chosen[0], out
