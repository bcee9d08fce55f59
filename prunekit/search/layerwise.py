"""Per-layer ratio allocation: sensitivity curves -> knapsack allocation within the budget -> verify -> shrink if needed."""
from __future__ import annotations

import logging
from typing import Callable, Optional, Sequence

from torch import nn

from ..errors import ConfigError
from ..progress import Progress, ensure
from ..schedule.common import baseline_metrics, check_metrics, clone
from ..schedule.recovery import Recovery, check_recovery, run_finetune
from . import shard
from .allocate import allocate_ratios
from .bisect import accuracy_drop_points, within_budget
from .budget import SearchResult
from .sensitivity import SensitivityResult, sensitivity

log = logging.getLogger(__name__)


def layerwise_search(model: nn.Module, recovery: Recovery, *, max_accuracy_drop: float = 1.0,
                     ratios: Sequence[float] = (0.25, 0.5, 0.7, 0.8, 0.9, 0.95), exclude: Optional[Sequence[str]] = None,
                     shrink: float = 0.5, max_tries: int = 4, sens: Optional[SensitivityResult] = None,
                     on_probe: Optional[Callable[[dict], None]] = None,
                     progress: Optional[Progress] = None) -> SearchResult:
    """Per-layer ratios with the most reduction whose accuracy drop meets ``max_accuracy_drop`` (points).

    1. sensitivity: each layer pruned alone at each of ``ratios`` (or pass ``sens``);
    2. allocation: maximise removed weights subject to the sum of single-layer drops within
       the budget (multiple-choice knapsack, :func:`allocate_ratios`);
    3. verification: ``recovery.prune_layers`` with those ratios, ``recovery.finetune``, evaluate and
       measure; drops rarely add up exactly, so if the combined model misses the budget the
       allocation budget is multiplied by ``shrink`` and the step repeats (at most ``max_tries``).
    Every try is a row of ``result.probes`` (and ``on_probe(row)``); fit histories go to ``result.histories``.
    Under torchrun the sensitivity probes are shared out over the ranks and the tries run as many at once as
    there are ranks (the first within budget wins, as in one process); every rank ends with the chosen model.
    """
    check_recovery(recovery, "layerwise_search")
    if recovery.prune_layers is None:
        raise ConfigError("layerwise_search prunes with per-layer ratios and needs recovery.prune_layers; "
                          "Recovery.default builds it, or pass recovery.with_(prune_layers=fn)")
    if not 0.0 < shrink < 1.0:
        raise ConfigError(f"shrink must lie strictly between 0 and 1, got {shrink}")
    if sens is None:
        sens = sensitivity(model, recovery, ratios=ratios, exclude=exclude, progress=progress)
    baseline = shard.broadcast_json(baseline_metrics(model, recovery))  # rank 0's timings on every rank
    base_acc = baseline["val_accuracy"]
    probes, histories, best, best_model, interrupted = [], [], None, model, sens.interrupted
    budgets = [max_accuracy_drop]
    for _ in range(1, max_tries):
        budgets.append(budgets[-1] * shrink)
    kept: dict = {}  # try index -> its model, for the tries this rank computed that met the budget
    stash: list = []  # fit rows of an interrupted try on this rank

    def attempt(i: int) -> tuple:
        alloc = allocate_ratios(sens.drops, sens.sizes, budgets[i])
        pruned = recovery.prune_layers(clone(model), alloc)
        rows, fit_interrupted = run_finetune(recovery, pruned)
        if fit_interrupted:
            stash.append(rows)
            raise KeyboardInterrupt
        return alloc, pruned, rows

    def verify(i: int) -> dict:
        kept.clear()  # an earlier round had no winner, or the search would have stopped
        alloc, pruned, rows = attempt(i)
        metrics = check_metrics(recovery.evaluate(pruned))
        row = {"index": i, "allocation_budget": budgets[i], "layer_ratios": alloc,
               **{f"val_{k}": float(v) for k, v in metrics.items()}, **recovery.measure(pruned),
               "drop_points": accuracy_drop_points(base_acc, metrics["accuracy"])}
        row["ok"] = within_budget(base_acc, metrics["accuracy"], max_accuracy_drop)
        row["ratio"] = _weighted_ratio(alloc, sens.sizes)
        if row["ok"]:
            kept[i] = pruned
        return {"row": row, "history": rows}

    seed = shard.sweep_seed()
    with ensure(progress).task("per-layer allocation", total=max_tries) as task:
        def record(i: int, out: dict) -> bool:  # every rank, every try in order; the first within budget wins
            nonlocal best
            probes.append(out["row"])
            histories.append(out["history"])
            if on_probe is not None:
                on_probe(out["row"])
            task.advance()
            if out["row"]["ok"]:
                best = out["row"]
            return bool(out["row"]["ok"])

        try:  # under torchrun the tries (each a smaller budget) run in parallel, as many as there are ranks
            shard.map_sharded(verify, list(range(max_tries)),
                              seeds=[shard.probe_seed(seed, i) for i in range(max_tries)], on_result=record)
        except KeyboardInterrupt:
            interrupted = True
            histories.extend(stash)
    if best is not None:
        i = best["index"]
        best_model = shard.share_model(kept.get(i), lambda: shard.run_alone(lambda: attempt(i)[1],
                                                                            shard.probe_seed(seed, i)))
    kept.clear()
    res = SearchResult(model=best_model, ratio=best["ratio"] if best else 0.0, objective="ratio",
                       max_accuracy_drop=max_accuracy_drop, baseline=baseline, best=best, probes=probes,
                       interrupted=interrupted, extra={"method": "layerwise", "sensitivity": sens.summary(),
                                                       "layer_ratios": best["layer_ratios"] if best else {}},
                       histories=histories)
    res.message = (f"per-layer ratios removing {res.ratio:.1%} of the prunable weights, {best['drop_points']:.2f}-point drop"
                   if best else f"no allocation met the {max_accuracy_drop}-point budget in {len(probes)} tries; "
                   "the unpruned model is kept")
    if interrupted:
        res.message = "interrupted; " + res.message
    return res


def _weighted_ratio(alloc: dict, sizes: dict) -> float:
    total = sum(sizes.get(n, 0) for n in alloc)
    return sum(r * sizes.get(n, 0) for n, r in alloc.items()) / total if total else 0.0
