"""Pruning to a measured latency: channel removals allocated by importance lost per millisecond saved.

``prunekit.prune(model, x, granularity="channel", latency_target=0.5)`` keeps half of the dense model's measured
latency (a float in (0, 1] is a fraction of it; a string ``"12ms"`` / ``"12.5 ms"`` is an absolute time), measured
at the example inputs' shapes (``latency_batch`` changes the batch) and ``torch.get_num_threads()``
(``latency_threads``), PyTorch eager float32 on CPU. The latency model is :mod:`.latency_table`, measured by
:mod:`.latency_timing`.

Allocation (:func:`allocate`): every prunable group may shrink to the widths its lookup table was measured at
(multiples of 4 / 8 / 16 and the dense width) no lower than ``layer_floor`` of its channels; each group loses its
lowest-scoring channels first (scores normalised per layer; a channel's importance is summed over the layers it
runs through, :func:`totals`). Greedily, in chunks
of one candidate width, the move with the least importance lost per predicted millisecond saved is taken until the
predicted latency meets the target (the last move is the cheapest one that meets it). A width the table says is no
faster than a wider one is never chosen, so widths snap to the fast ones and ``round_to`` is not used. A target
that needs a group below its floor raises :class:`~prunekit.errors.BudgetError` naming the closest reachable latency.

The plan keeps the prediction (``plan.latency``: target, dense and predicted ms, per layer the predicted ms and
widths, per group the kept width); ``prunekit.prune`` adds the pruned model's measured latency, in total and per
layer (:func:`.latency_check.measure_pruned`), readable with :func:`latency_report`; the allocation is checked on
the real pruned model first (:func:`.latency_check.meet_measured`).
"""
from __future__ import annotations

import logging
import re
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np

from ..errors import BudgetError, ConfigError
from .latency_check import CHECKS
from .latency_table import LatencyTable, candidate_widths
from .latency_timing import build_table
from .select import LATENCY_FLOORS, choose, max_removable

log = logging.getLogger(__name__)

_MS = re.compile(r"^\s*([0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)\s*ms\s*$")


def parse_target(value: Any) -> Tuple[str, float]:
    """``("fraction", f)`` for a number in (0, 1], ``("ms", t)`` for a string like ``"12ms"``; else ConfigError."""
    if isinstance(value, str):
        m = _MS.match(value)
        if not m or float(m.group(1)) <= 0:
            raise ConfigError(f"latency_target={value!r} is not understood: give a fraction of the dense latency in "
                              "(0, 1] (0.5 = half) or an absolute time in milliseconds as a string ('12ms')")
        return "ms", float(m.group(1))
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"latency_target must be a fraction in (0, 1] or a string like '12ms', got {value!r}")
    if not 0 < float(value) <= 1:
        hint = f"; for {value} milliseconds write latency_target='{value}ms'" if float(value) > 1 else ""
        raise ConfigError(f"latency_target={value!r} is ambiguous as a number outside (0, 1]: a number is the fraction "
                          f"of the dense latency to keep{hint}")
    return "fraction", float(value)


def check_spec(spec) -> None:
    """The options that contradict a latency target (called from PruneSpec validation)."""
    if spec.latency_target is None:
        if spec.latency_allocation != "scores":
            raise ConfigError(f"latency_allocation={spec.latency_allocation!r} ranks the removals of a latency_target; "
                              "give latency_target too, or remove it")
        for name in ("latency_batch", "latency_threads", "latency_checks"):
            if getattr(spec, name) is not None:
                raise ConfigError(f"{name}={getattr(spec, name)!r} sets how latency_target is measured; give "
                                  "latency_target too, or remove it")
        return
    parse_target(spec.latency_target)
    clashes = {"macs_target": spec.macs_target is not None, "round_to": spec.round_to is not None,
               "uniform": bool(spec.uniform), "scope='local'": spec.scope == "local"}
    why = {"macs_target": "give one target", "round_to": "the latency table picks the widths that run fastest",
           "uniform": "the latency allocation sizes every group on its own",
           "scope='local'": "the latency allocation ranks all groups together (global)"}
    for name, bad in clashes.items():
        if bad:
            raise ConfigError(f"latency_target and {name} cannot be combined: {why[name]}; remove {name}")
    for name in ("latency_batch", "latency_threads"):
        v = getattr(spec, name)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
            raise ConfigError(f"{name} must be a positive integer (None: the example inputs' batch / the current "
                              f"thread count), got {v!r}")
    v = spec.latency_checks
    if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
        raise ConfigError(f"latency_checks must be a whole number >= 0 (re-allocations after measuring the pruned "
                          f"model; 0: trust the latency table; None: {CHECKS}), got {v!r}")


class _Predictor:
    """Predicted latency under a removal mask, with per-unit and per-rest-node caches so a move is priced locally."""

    def __init__(self, table: LatencyTable, touch: Dict[int, Tuple[List[int], List[int]]]):
        self.table, self.touch = table, touch
        self.mask = np.zeros(table.n_ids, dtype=bool)
        self.unit_ms = [u.time(u.kept(self.mask)) for u in table.units]
        self.rest_total = sum(table.rest_cost(r) for r in table.rest) or 1.0
        self.rest_el = [table.rest_cost(r) for r in table.rest]  # each rest op's current weight (size curve)
        self.scale = table.model_ms / max(1e-12, self.raw())  # calibrated: the dense prediction is the measurement

    def raw(self) -> float:
        return float(sum(self.unit_ms) + self.table.rest_ms * sum(self.rest_el) / self.rest_total)

    def total(self) -> float:
        return self.raw() * self.scale

    def delta(self, gi: int, old: np.ndarray, new: np.ndarray, commit: bool = False) -> float:
        """Change of the (calibrated) prediction when group ``gi``'s removed atoms go from ``old`` to ``new``."""
        self.mask[old] = False
        self.mask[new] = True
        units, rest = self.touch[gi]
        d = 0.0
        new_units = {}
        for i in units:
            u = self.table.units[i]
            t = u.time(u.kept(self.mask))
            d += t - self.unit_ms[i]
            new_units[i] = t
        new_rest = {}
        for j in rest:
            r = self.table.rest[j]
            e = self.table.rest_cost(r, self.mask)
            d += self.table.rest_ms * (e - self.rest_el[j]) / self.rest_total
            new_rest[j] = e
        if commit:
            for i, t in new_units.items():
                self.unit_ms[i] = t
            for j, e in new_rest.items():
                self.rest_el[j] = e
        else:
            self.mask[new] = False
            self.mask[old] = True
        return d * self.scale


def _touch(table: LatencyTable, groups) -> Dict[int, Tuple[List[int], List[int]]]:
    out = {}
    for g in groups:
        member = np.zeros(table.n_ids, dtype=bool)
        member[g.atoms] = True
        units = [i for i, u in enumerate(table.units) if any(member[a.roots].any() for a in u.axes)]
        rest = [j for j, r in enumerate(table.rest) if any(member[d].any() for d in r.dims)]
        out[g.index] = (units, rest)
    return out


def totals(model, g, scores: np.ndarray, reduction: str) -> np.ndarray:
    """Each channel's importance summed over the layers it runs through: the criterion's per-layer-mean scores
    (``reduction="mean"``) times the number of the group's layers with parameters holding that channel (the rows
    the mean was taken over). A channel of a residual stream crosses many layers and costs all of them; ranked by
    its mean, ResNet-20's stage-1 stream looked as cheap as one block's inner channel and was cut to a quarter
    (bench-latency, docs/bench/bench_latency_run1.log). Other reductions are taken as they are."""
    from ..importance.aggregate import member_slices

    scores = np.asarray(scores, dtype=float)
    if reduction != "mean":
        return scores
    counts = np.zeros(len(g.atoms))
    rule = getattr(g, "module_rule", None)
    for member in g.members:
        if member_slices(model, member.axis, rule):
            counts += np.isin(g.atoms, member.atoms)
    return scores * np.maximum(counts, 1.0)


def _candidates(g, scores: np.ndarray, floor: float, fixed: Optional[int]) -> List[Tuple[int, np.ndarray, float]]:
    """(kept width, removed atoms, importance lost) per width the group may take, widest first."""
    n = len(g.atoms)
    if fixed is not None:
        atoms = choose(g, scores, fixed)
        return [(n - len(atoms), atoms, 0.0)]
    lowest = n - max_removable(g, floor)
    rows = max((d.shape[0] for d in g.divisions), default=1)
    out = []
    score_of = dict(zip(g.atoms.tolist(), np.asarray(scores, dtype=float).tolist()))
    for w in sorted(candidate_widths(n), reverse=True):
        if w < lowest or (n - w) % rows:
            continue
        atoms = choose(g, scores, n - w)
        if len(atoms) != n - w:
            continue
        out.append((w, atoms, float(sum(score_of[int(a)] for a in atoms.tolist()))))
    return out or [(n, np.zeros(0, dtype=np.int64), 0.0)]


def allocate(model, graph, example_inputs, scores: Dict[int, np.ndarray], cfg, fixed: Dict[int, int],
             timer: Optional[Callable] = None, aim_ms: Optional[float] = None, damage: Optional[Callable] = None
             ) -> Tuple[Dict[int, np.ndarray], Dict[str, Any]]:
    """Atoms to remove per group so the predicted latency meets ``cfg.latency_target`` (or ``aim_ms``, the
    predicted time a measured correction aims at), and the latency report. ``damage(group index, atoms)``
    (``latency_allocation="measured"``, :class:`.latency_damage.MeasuredDamage`) prices each candidate width
    instead of the criterion's summed scores."""
    groups = [g for g in graph.groups if g.index in scores]
    table = build_table(model, graph, example_inputs, groups, batch=cfg.latency_batch, threads=cfg.latency_threads,
                        timer=timer)
    kind, value = parse_target(cfg.latency_target)
    asked = value * table.model_ms if kind == "fraction" else value
    target = asked if aim_ms is None else float(aim_ms)
    imp = {g.index: totals(model, g, scores[g.index], cfg.reduction) for g in groups}
    pred = _Predictor(table, _touch(table, groups))
    for g in groups:  # fixed (layer_ratios) groups start at their one width
        if g.index in fixed:
            atoms = choose(g, imp[g.index], fixed[g.index])
            if len(atoms):
                pred.delta(g.index, atoms[:0], atoms, commit=True)
    # layer_floor=None: the highest floor of LATENCY_FLOORS at which the target is reachable (the last one else)
    for floor in (LATENCY_FLOORS if cfg.layer_floor is None else (cfg.layer_floor,)):
        cands = {g.index: _candidates(g, imp[g.index], floor, fixed.get(g.index)) for g in groups}
        floor_mask = pred.mask.copy()
        for c in cands.values():
            floor_mask[c[-1][1]] = True
        reachable = LatencyTable.predict(table, floor_mask) * pred.scale
        if reachable <= target:
            break
    if reachable > target:
        c = table.conditions
        how = (f"layer_floor={cfg.layer_floor}" if cfg.layer_floor is not None
               else f"layer_floor=None tried {', '.join(map(str, LATENCY_FLOORS))}")
        err = BudgetError(
            f"latency_target {target:.4g} ms ({target / table.model_ms:.1%} of the dense {table.model_ms:.4g} ms at "
            f"batch {c.batch}, {c.threads} thread(s), {c.backend}) cannot be reached without emptying a layer: the "
            f"closest reachable latency is {reachable:.4g} ms ({reachable / table.model_ms:.1%}), every group at its "
            f"floor ({how}); ask for at least that, lower layer_floor or un-ignore layers")
        err.reachable_ms, err.dense_ms = float(reachable), float(table.model_ms)  # for callers that clamp a target
        raise err
    if damage is not None:
        cands = {gi: c if gi in fixed else [(w, atoms, damage(gi, atoms)) for w, atoms, _ in c]
                 for gi, c in cands.items()}
    at = {gi: 0 for gi in cands}  # index into each group's candidate list
    current = pred.total()
    moves = 0
    while current > target:
        best, best_key = None, None
        for gi, c in cands.items():
            i0 = at[gi]
            _, old_atoms, old_imp = c[i0]
            for i in range(i0 + 1, len(c)):
                _, atoms, imp = c[i]
                saved = -pred.delta(gi, old_atoms, atoms)
                if saved <= 1e-12:
                    continue
                lost = imp - old_imp
                meets = current - saved <= target
                key = (0, lost, -saved) if meets else (1, lost / saved, -saved)
                if best_key is None or key < best_key:
                    best, best_key = (gi, i, saved), key
        if best is None:  # nothing the table can still save one group at a time: everything at its floor
            for gi, c in cands.items():
                pred.delta(gi, c[at[gi]][1], c[-1][1], commit=True)
                at[gi] = len(c) - 1
            current = pred.total()
            break
        gi, i, _ = best
        pred.delta(gi, cands[gi][at[gi]][1], cands[gi][i][1], commit=True)
        at[gi] = i
        current = pred.total()
        moves += 1
    removed = {gi: cands[gi][at[gi]][1] for gi in cands}
    log.info("latency allocation: %d moves, predicted %.4g ms for a %.4g ms target (dense %.4g ms)", moves, current,
             target, table.model_ms)
    out = report(table, pred, cands, at, asked, reachable, cfg.latency_target, aim_ms=target)
    out["layer_floor"] = float(floor)
    out["allocation"] = damage.summary() if hasattr(damage, "summary") else {
        "allocation": "scores" if damage is None else "measured"}
    return removed, out


def report(table: LatencyTable, pred: _Predictor, cands, at, target: float, reachable: float,
           asked: Any, aim_ms: Optional[float] = None) -> Dict[str, Any]:
    """The JSON-able latency section of a plan: conditions, target, prediction per layer and widths per group."""
    c = table.conditions
    layers = table.per_unit(pred.mask)
    for row in layers.values():
        row["dense_ms"] *= pred.scale
        row["predicted_ms"] *= pred.scale
    rest_frac = table.rest_fraction(pred.mask)
    return {"target": asked, "target_ms": float(target), "aim_ms": float(target if aim_ms is None else aim_ms),
            "dense_ms": float(table.model_ms),
            "predicted_ms": float(pred.total()), "reachable_ms": float(reachable), **c.as_dict(),
            "cache_file": table.path, "timer_calls": table.timed_calls,
            "rest": {"dense_ms": table.rest_ms * pred.scale, "predicted_ms": table.rest_ms * rest_frac * pred.scale},
            "layers": layers,
            "groups": {str(gi): {"kept": int(cand[at[gi]][0]), "widths": [int(w) for w, _, _ in cand]}
                       for gi, cand in cands.items()}}


# --- after surgery: the plan's latency section ---------------------------------------------------------------


def latency_report(model) -> Optional[Dict[str, Any]]:
    """The latency section of the last structured pruning recorded on ``model`` (None if it had no latency target)."""
    from .plan import get_plan

    plan = get_plan(model)
    if not plan:
        return None
    steps = plan.get("steps", [plan])
    return steps[-1].get("latency") if steps else None


# --- searches: the same latency model for budget_search(objective="latency") ----------------------------------


def latency_measure_fn(model, example_inputs, measure: Optional[Callable] = None, *, batch: Optional[int] = None,
                       threads: Optional[int] = None, leaf_modules=(), tracer: str = "auto") -> Callable:
    """A ``Recovery.measure`` that reports ``latency_ms`` predicted by ``model``'s latency table (measured once,
    cached) for each channel-pruned copy, with ``measure``'s other numbers (sizes), so
    ``budget_search(..., objective="latency")`` ranks probes by the latency model instead of noisy timings.
    ``budget_search`` wires it (and :func:`latency_prune_fn`) itself when given ``example_inputs``; by hand::

        recovery = Recovery.default(data, x, granularity="channel", ...)
        recovery = recovery.with_(measure=latency_measure_fn(model, x, recovery.measure),
                                  prune=latency_prune_fn(x, criterion="l2"))
        budget_search(model, recovery, objective="latency")
    """
    from ..graph.groups import build_graph
    from ..match import as_patterns
    from .handlers import handler_for

    graph = build_graph(model, example_inputs, tuple(as_patterns(leaf_modules, "leaf_modules")), tracer,
                        module_rule=handler_for)
    groups = [g for g in graph.groups if g.reason is None and len(g.prunable)]
    table = build_table(model, graph, example_inputs, groups, batch=batch, threads=threads)

    def fn(pruned) -> Dict[str, Any]:
        out = dict(measure(pruned)) if measure is not None else {}
        out["latency_ms"] = table.predict_model(pruned)
        return out

    fn.table = table  # type: ignore[attr-defined]
    return fn


def latency_prune_fn(example_inputs, **prune_kwargs) -> Callable:
    """A channel ``Recovery.prune`` whose ratio is the fraction of latency to remove: ``step=r`` prunes the current
    model to ``latency_target=1 - r`` of its predicted latency (``prune_kwargs``: other ``prunekit.prune`` options).
    The pruned model is not timed (``prunekit.prune`` would time it for the report, and check the allocation on it
    unless ``latency_checks=0``): a search's probes are ranked by the table's prediction, read with
    :func:`latency_report`; ``latency_checks`` in ``prune_kwargs`` turns the measured checks on per probe."""
    import copy

    from ..api import plan

    def fn(model, *, total: float, step: float, inplace: bool = False):
        if step <= 0:
            return model
        target = model if inplace else copy.deepcopy(model)
        the_plan = plan(target, example_inputs, granularity="channel", latency_target=max(1e-6, 1.0 - step),
                        **{"latency_checks": 0, **prune_kwargs})
        return the_plan.apply(target, example_inputs)

    fn.cuts_latency = True  # type: ignore[attr-defined]  # its ratio is a latency cut (budget_search checks)
    return fn
