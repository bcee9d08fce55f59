"""Accuracy-budgeted search ("joint pruning"): the most pruning that still meets an accuracy budget after recovery."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional

from torch import nn

from ..errors import BudgetError, ConfigError, PrunekitError
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
                  progress: Optional[Progress] = None, example_inputs=None,
                  prune_kwargs: Optional[dict] = None) -> SearchResult:
    """Bisection over the global pruning ratio: largest ratio (or smallest MACs, or largest latency cut) whose
    validation accuracy, after recovery, is within ``max_accuracy_drop`` points of the unpruned model.

    The unpruned model is evaluated and measured first (``result.baseline``). Each probe prunes a
    fresh copy of ``model`` at a ratio r, recovers, evaluates and measures; results are cached by
    ratio, every probe is returned in ``result.probes`` (and passed to ``on_probe(probe)``), each
    computed probe's fit history in ``result.histories``. ``schedule`` says how a probe reaches r:
    ``"oneshot"`` (``recovery.prune(copy, total=r, step=r)``, then ``recovery.finetune``), ``"agp"``
    (:func:`prunekit.schedule.agp_prune`: weights pruned gradually *during* the fine-tune) or
    ``"iterative"`` (:func:`prunekit.schedule.iterative_prune`, ``rounds`` rounds on a cubic path).
    Accuracy is assumed to fall with the ratio (the search is a bisection); for ``objective="macs"`` the
    winner is the feasible probe with the smallest non-zero MACs. Ctrl-C (or an interrupted fit) returns
    the best model found so far with ``result.interrupted``.

    ``objective="latency"`` (channel granularity; weight pruning has no latency model) searches over the
    fraction of latency removed: the probe at ratio r is pruned to ``latency_target=1 - r`` by the latency
    allocation (:func:`prunekit.structured.latency.latency_prune_fn`, ``prunekit.prune`` options from
    ``prune_kwargs``: criterion, ignore, layer_floor, latency_batch, latency_threads, ...) and its ``latency_ms``
    is the dense model's lookup table looked up at its widths (:func:`~prunekit.structured.latency.latency_measure_fn`:
    measured once at ``example_inputs``' shapes, cached; no probe is timed), ``latency_cut`` the fraction of the
    dense latency it removes. The winner is the feasible probe with the smallest predicted latency: the largest
    latency cut within the budget. ``hi`` is lowered to the deepest cut the model allows (every group at its
    ``layer_floor``; ``result.extra["max_latency_cut"]``). Pass ``example_inputs``, or a ``recovery`` already
    built with those two helpers.

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
    extra: dict = {}
    if objective == "latency":
        recovery = latency_recovery(model, recovery, example_inputs, prune_kwargs)
        hi = extra["max_latency_cut"] = max_latency_cut(model, recovery, lo, hi)
    elif example_inputs is not None or prune_kwargs is not None:
        raise ConfigError(f"example_inputs and prune_kwargs configure the probes of objective 'latency'; objective "
                          f"{objective!r} prunes with recovery.prune: remove them")
    baseline = shard.broadcast_json(baseline_metrics(model, recovery))  # rank 0's timings on every rank
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
        if objective == "latency" and baseline["latency_ms"] > 0:
            row["latency_cut"] = 1.0 - row["latency_ms"] / baseline["latency_ms"]
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
    out.extra.update(extra)
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


def latency_recovery(model: nn.Module, recovery: Recovery, example_inputs, prune_kwargs: Optional[dict]) -> Recovery:
    """``recovery`` with the latency model's prune (ratio = latency cut) and measure (table lookup) for objective
    'latency'; one already built with them is kept. Rank 0 measures the table first, the others read its cache."""
    from ..structured.latency import latency_measure_fn, latency_prune_fn

    if recovery.granularity != "channel":
        raise ConfigError(f"objective 'latency' needs granularity 'channel': {recovery.granularity} pruning has no "
                          "latency model (masked weights run as fast as dense ones); prune channels, or search with "
                          "objective 'ratio' / 'macs'")
    wired = hasattr(recovery.measure, "table") and getattr(recovery.prune, "cuts_latency", False)
    if example_inputs is None:
        if wired and prune_kwargs is None:
            return recovery
        raise ConfigError("objective 'latency' prunes each probe to a latency cut and looks its latency up in the "
                          "dense model's latency table: pass example_inputs= (the inputs the latency is measured at; "
                          "prunekit.prune options in prune_kwargs=), or a recovery built with "
                          "prunekit.structured.latency.latency_measure_fn and latency_prune_fn")
    kw = dict(prune_kwargs or {})
    clash = sorted(set(kw) & {"granularity", "ratio", "latency_target", "inplace", "macs_target"})
    if clash:
        raise ConfigError(f"prune_kwargs may not set {', '.join(clash)}: objective 'latency' prunes channels to the "
                          "latency cut the search chooses")

    def build():
        return shard.run_alone(lambda: latency_measure_fn(
            model, example_inputs, recovery.measure, batch=kw.get("latency_batch"), threads=kw.get("latency_threads"),
            leaf_modules=kw.get("leaf_modules", ()), tracer=kw.get("tracer", "auto")), None)

    measure = _rank0_first(build)
    return recovery.with_(measure=measure, prune=latency_prune_fn(example_inputs, **kw))


def _rank0_first(build: Callable):
    """``build()`` on rank 0, then on the other ranks (which read the latency table rank 0 cached): one table."""
    rank, size = shard.world()
    if size == 1:
        return build()
    out, error = None, None
    if rank == 0:
        try:
            out = build()
        except Exception as exc:  # every rank learns of it below, so none waits for rank 0 forever
            error = exc
    failed = shard.broadcast_json(None if error is None else f"{type(error).__name__}: {error}")
    if error is not None:
        raise error
    if failed:
        raise PrunekitError(f"rank 0 of the torchrun job failed to build the latency table ({failed})")
    out = build()
    if getattr(out, "table", None) is not None and out.table.timed_calls:
        log.warning("rank %d re-measured the latency table (rank 0's cache %s was not readable): its probes' "
                    "latencies may differ from rank 0's", rank, out.table.path)
    return out


def max_latency_cut(model: nn.Module, recovery: Recovery, lo: float, hi: float) -> float:
    """``hi``, or the deepest latency cut below it that the allocation can reach (every group at its floor)."""
    try:
        shard.run_alone(lambda: recovery.prune(clone(model), total=hi, step=hi), 0)
        return hi
    except BudgetError as exc:
        reachable, dense = getattr(exc, "reachable_ms", None), getattr(exc, "dense_ms", None)
        if reachable is None or not dense:
            raise
    cut = math.floor((1.0 - reachable / dense) * 1e6) / 1e6 - 1e-6  # on the probes' 6-decimal grid, reachable
    if cut <= lo:
        raise BudgetError(f"objective 'latency': the deepest latency cut the model allows is {max(cut, 0.0):.2%} "
                          f"(predicted {reachable:.4g} ms of the dense {dense:.4g} ms, every group at its layer "
                          f"floor), not above lo={lo}; lower lo or layer_floor, or un-ignore layers")
    log.info("objective 'latency': latency cuts above %.4f are unreachable (layer floors); hi %.4f -> %.4f", cut, hi,
             cut)
    return cut


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
    elif "latency_cut" in best:
        out.message = (f"best latency cut {best['latency_cut']:.2%} (predicted {best['latency_ms']:.4g} ms of "
                       f"{baseline['latency_ms']:.4g} ms; {len(probes)} probes): validation accuracy "
                       f"{best['val_accuracy']:.4f} ({best['drop_points']:.2f}-point drop, budget {max_drop})")
    else:
        out.message = (f"best ratio {best['ratio']:.4f} ({len(probes)} probes): validation accuracy "
                       f"{best['val_accuracy']:.4f} ({best['drop_points']:.2f}-point drop, budget {max_drop})")
    if res.interrupted:
        out.message = "interrupted; " + out.message
    log.info(out.message)
    return out
