"""Accuracy-budgeted search ("joint pruning"): the most pruning that still meets an accuracy budget after recovery."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from torch import nn

from ..errors import ConfigError
from ..progress import Progress, ensure
from ..schedule.common import baseline_metrics, check_metrics, clone
from ..schedule.recovery import Recovery, check_recovery, run_finetune
from . import shard
from .bisect import CachedEvaluator, Probe, accuracy_drop_points, bisect_ratio, within_budget

log = logging.getLogger(__name__)

OBJECTIVES = ("ratio", "macs", "latency")
PROBE_SCHEDULES = ("oneshot", "agp", "iterative")  # how a probe reaches its ratio before it is judged


@dataclass
class SearchResult:
    """The chosen model and every probe that led to it."""

    model: nn.Module  # best pruned + recovered model within budget (the input model if none was)
    ratio: float  # its pruning ratio (0.0 if no probe met the budget)
    objective: str  # what "best" meant: largest ratio, smallest MACs or smallest latency
    max_accuracy_drop: float  # the budget, in validation-accuracy points
    baseline: dict = field(default_factory=dict)  # unpruned validation metrics and size
    best: Optional[dict] = None  # the winning probe's row
    probes: list = field(default_factory=list)  # every evaluated setting, in order
    interrupted: bool = False  # Ctrl-C ended the search; the model is the best so far
    message: str = ""
    extra: dict = field(default_factory=dict)  # method-specific details (e.g. per-layer ratios)
    histories: List[List[dict]] = field(default_factory=list)  # fit history rows of each computed probe, in order

    @property
    def fit_history(self) -> List[dict]:
        """Every fine-tune epoch row of the search, in training order."""
        return [row for rows in self.histories for row in rows]

    def summary(self) -> dict:
        return {"ratio": self.ratio, "objective": self.objective, "max_accuracy_drop": self.max_accuracy_drop,
                "baseline": self.baseline, "best": self.best, "probes": self.probes, "interrupted": self.interrupted,
                "message": self.message, **self.extra}


def objective_key(objective: str, granularity: str) -> str:
    if objective == "macs":
        return "nonzero_macs" if granularity == "weight" else "macs"
    return "latency_ms" if objective == "latency" else "ratio"


def better(p: dict, q: Optional[dict], key: str) -> bool:
    """Is probe ``p`` better than ``q`` for the objective: larger ratio, or smaller MACs / latency."""
    if q is None:
        return True
    return p[key] > q[key] if key == "ratio" else p[key] < q[key]


def budget_search(model: nn.Module, recovery: Recovery, *, max_accuracy_drop: float = 1.0, objective: str = "ratio",
                  schedule: str = "oneshot", rounds: int = 3, lo: float = 0.0, hi: float = 0.99, tol: float = 0.01,
                  max_probes: int = 10, on_probe: Optional[Callable[[dict], None]] = None,
                  progress: Optional[Progress] = None) -> SearchResult:
    """Bisection over the global pruning ratio: largest ratio (or smallest MACs / latency) whose validation
    accuracy, after recovery, is within ``max_accuracy_drop`` points of the unpruned model.

    The unpruned model is evaluated and measured first (``result.baseline``). Each probe prunes a
    fresh copy of ``model`` at a ratio r, recovers, evaluates and measures; results are cached by
    ratio, every probe is returned in ``result.probes`` (and passed to ``on_probe(probe)``), each
    computed probe's fit history in ``result.histories``. ``schedule`` says how a probe reaches r:
    ``"oneshot"`` (``recovery.prune(copy, total=r, step=r)``, then ``recovery.finetune``), ``"agp"``
    (:func:`prunekit.schedule.agp_prune`: weights pruned gradually *during* the fine-tune) or
    ``"iterative"`` (:func:`prunekit.schedule.iterative_prune`, ``rounds`` rounds on a cubic path).
    Accuracy is assumed to fall with the ratio (the search is a bisection); for ``objective="macs"`` /
    ``"latency"`` the winner is the feasible probe with the smallest non-zero MACs / latency
    (``recovery.measure`` must then report ``latency_ms``). Ctrl-C (or an interrupted fit) returns
    the best model found so far with ``result.interrupted``.

    Under torchrun each bisection round probes one ratio per rank (:func:`bisect_ratio`'s speculative
    rounds): the probes, the chosen ratio and the fit histories equal one process's, every rank ends with
    the winning model (the rank that computed it sends its weights; the others rebuild its structure by
    re-running that probe) and ``result.extra["speculative_probes"]`` lists the probes off the path.
    """
    check_recovery(recovery, "budget_search")
    if objective not in OBJECTIVES:
        raise ConfigError(f"search objective must be one of {', '.join(OBJECTIVES)}, got {objective!r}")
    if schedule not in PROBE_SCHEDULES:
        raise ConfigError(f"search schedule must be one of {', '.join(PROBE_SCHEDULES)}, got {schedule!r}")
    if schedule == "agp" and recovery.granularity != "weight":
        raise ConfigError("schedule 'agp' prunes weights gradually; use 'oneshot' or 'iterative' for channel pruning")
    if max_accuracy_drop < 0:
        raise ConfigError(f"max_accuracy_drop must be >= 0 points, got {max_accuracy_drop}")
    baseline = shard.broadcast_json(baseline_metrics(model, recovery))  # rank 0's timings on every rank
    if objective == "latency" and "latency_ms" not in baseline:
        raise ConfigError("objective 'latency' needs recovery.measure to report latency_ms; build the recovery with "
                          "Recovery.default(..., measure_latency=True)")
    key = objective_key(objective, recovery.granularity)
    reach = make_reach(schedule, model, recovery, rounds=rounds)
    best: dict = {"row": None}  # the winning probe's row so far, the same on every rank
    kept: dict = {}  # ratio -> pruned model, for the probes this rank computed that met the budget
    histories: dict = {}  # ratio -> fit history rows, for the probes this rank computed

    def evaluate_ratio(ratio: float):
        for r in list(kept):  # the previous round is walked: of the models kept only the best so far can win
            if best["row"] is None or r != best["row"]["ratio"]:
                del kept[r]
        pruned, rows, interrupted = reach(ratio)
        histories[ratio] = rows
        if interrupted:
            raise KeyboardInterrupt
        metrics = check_metrics(recovery.evaluate(pruned))
        row = {**{f"val_{k}": float(v) for k, v in metrics.items()}, **recovery.measure(pruned),
               "drop_points": accuracy_drop_points(baseline["val_accuracy"], metrics["accuracy"])}
        if within_budget(baseline["val_accuracy"], metrics["accuracy"], max_accuracy_drop):
            kept[ratio] = pruned
        return float(metrics["accuracy"]), row

    seed = shard.sweep_seed()
    progress = ensure(progress)
    with progress.task(f"budget search ({recovery.granularity}, <= {max_accuracy_drop} pt)", total=max_probes) as task:
        def probed(p: Probe) -> None:  # every rank, every probe of the search path, in order
            row = {**p.extra, "ratio": p.ratio}
            if p.ok and better(row, best["row"], key):
                best["row"] = row
            task.advance()
            task.note(ratio=p.ratio, val_acc=p.accuracy, ok=p.ok)
            if on_probe is not None:
                on_probe(p.as_dict())

        res = bisect_ratio(CachedEvaluator(evaluate_ratio), baseline=baseline["val_accuracy"],
                           max_drop_points=max_accuracy_drop, lo=lo, hi=hi, tol=tol, max_probes=max_probes,
                           on_probe=probed, seed=seed)
    state = {"best": best["row"], "model": None}
    if best["row"] is not None:
        r = best["row"]["ratio"]
        state["model"] = shard.share_model(kept.get(r), lambda: shard.run_alone(lambda: reach(r)[0],
                                                                                  shard.probe_seed(seed, r)))
    kept.clear()
    out = _result(model, res, state, baseline, objective, max_accuracy_drop)
    out.histories = _path_histories(histories, res)
    if res.speculative:
        out.extra["speculative_probes"] = [p.as_dict() for p in res.speculative]
    return out


def _path_histories(local: dict, res) -> list:
    """Fit history rows of the probes on the search path in order, then of an interrupted one, from every rank."""
    merged: dict = {}
    for part in shard.gather_json([[r, rows] for r, rows in local.items()]):
        merged.update({r: rows for r, rows in part})
    path = [p.ratio for p in res.probes]
    off = {p.ratio for p in res.speculative}
    stopped = [rows for r, rows in merged.items() if r not in path and r not in off]
    return [merged[r] for r in path if r in merged] + stopped


def make_reach(schedule: str, model: nn.Module, recovery: Recovery, *, rounds: int):
    """``ratio -> (pruned and recovered copy of model, its fit history rows, interrupted)`` for the chosen schedule."""
    if schedule == "oneshot":
        def reach(ratio: float):
            pruned = recovery.prune(clone(model), total=ratio, step=ratio)
            rows, interrupted = run_finetune(recovery, pruned)
            return pruned, rows, interrupted
    elif schedule == "agp":
        from ..schedule.gradual import AGPConfig, agp_prune

        def reach(ratio: float):
            res = agp_prune(model, recovery, final=ratio, timing=AGPConfig(interval=None))
            return res.model, res.fit_history, res.interrupted
    else:
        from ..schedule.iterative import iterative_prune

        def reach(ratio: float):
            res = iterative_prune(model, recovery, target=ratio, rounds=rounds, path="cubic")
            return res.model, res.fit_history, res.interrupted
    return reach


def _result(model, res, state, baseline, objective, max_drop) -> SearchResult:
    probes = [p.as_dict() for p in res.probes]
    best = state["best"]
    out = SearchResult(model=state["model"] if best else model, ratio=best["ratio"] if best else 0.0,
                       objective=objective, max_accuracy_drop=max_drop, baseline=baseline, best=best,
                       probes=probes, interrupted=res.interrupted)
    if best is None:
        out.message = f"no probed ratio met the {max_drop}-point budget; the unpruned model is kept"
    else:
        out.message = (f"best ratio {best['ratio']:.4f} ({len(probes)} probes): validation accuracy "
                       f"{best['val_accuracy']:.4f} ({best['drop_points']:.2f}-point drop, budget {max_drop})")
    if res.interrupted:
        out.message = "interrupted; " + out.message
    log.info(out.message)
    return out
