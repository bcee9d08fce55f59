"""Structured pruning as a plan: trace -> group -> mark -> score -> select, then apply the plan.

:func:`plan_structured` returns a :class:`~prunekit.structured.planner.Plan` for granularity channel,
block or input without changing the model; ``Plan.apply`` performs it. ``prunekit.prune`` is both.
"""
from __future__ import annotations

import copy
import inspect
import re
import logging
from typing import Any, Callable, Dict, Iterable, List, Optional

import numpy as np
import torch
from torch import nn

from .._inputs import Inputs, run_model
from ..errors import PruningError
from ..graph.export_capture import output_tensors
from ..graph.groups import Graph, build_graph
from ..importance import CRITERIA, create_criterion
from ..match import as_patterns, check_patterns, selects, to_names, unmatched_message
from ..progress import Progress, ensure
from .budget import estimate_macs, layer_macs, resolve_target, search_ratio
from .calibrate import calibrate
from .handlers import handler_for
from .select import DEFAULT_FLOOR, choose, division_consistent, global_counts, local_count, round_count

log = logging.getLogger(__name__)
GRANULARITIES = ("channel", "block", "input")


def check_structured_patterns(model: nn.Module, part) -> None:
    """Every module pattern of ``part`` (include / exclude / ignore / freeze / layer_ratios keys / leaf_modules)
    selects a module of ``model``, before anything is traced; else :class:`PruningError` naming it."""
    for key in ("include", "exclude", "ignore", "freeze", "leaf_modules"):
        if hasattr(part, key):
            check_patterns(model, key, as_patterns(getattr(part, key), key))
    layer_ratios = getattr(part, "layer_ratios", None)
    if layer_ratios:
        check_patterns(model, "layer_ratios", list(layer_ratios))


def needs_data(crit) -> bool:
    return bool(crit.needs_data)


def check_data(part, calibration) -> None:
    """A data-driven criterion without calibration batches is refused before tracing."""
    if getattr(part, "latency_allocation", "scores") == "measured" and calibration is None:
        raise PruningError("latency_allocation='measured' runs every candidate width on calibration batches: pass "
                           "calibration=[(inputs, targets), ...] (targets are read only with a loss_fn)")
    if part.criterion in ("residual_norm",):
        return
    crit = make_criterion(part.criterion, part.seed)
    if needs_data(crit) and calibration is None:
        raise PruningError(f"criterion {getattr(crit, 'name', crit)!r} needs data: pass calibration=[(inputs, targets), ...]")


def limited(calibration: Optional[Iterable], batches: int) -> Optional[List]:
    """At most ``batches`` calibration batches, as a list (so every pass reads the same ones)."""
    if calibration is None:
        return None
    out = []
    for i, b in enumerate(calibration):
        if i >= batches:
            break
        out.append(b)
    return out


def plan_structured(model: nn.Module, example_inputs: Inputs, spec, *, calibration: Optional[Iterable] = None,
                    loss_fn: Optional[Callable] = None, progress: Optional[Progress] = None):
    """The :class:`~prunekit.structured.planner.Plan` of a channel / block / input ``spec`` on ``model``.

    ``model`` is traced and scored but not changed (a data-driven criterion reads gradients / activations
    of calibration batches; the caller works on a copy when that must not touch the user's model).
    """
    from .plan_build import snapshot_spec

    part = spec.part()
    check_structured_patterns(model, part)
    check_data(part, calibration)
    calibration = limited(calibration, part.calibration_batches)
    given = snapshot_spec(spec)
    progress = ensure(progress)
    if spec.granularity == "block":
        from .depth import plan_blocks

        with progress.task("block pruning plan", total=1) as task:
            plan = plan_blocks(model, example_inputs, part, calibration, given)
            task.advance()
        return plan
    if spec.granularity == "input":
        from .features import plan_inputs

        with progress.task("input feature plan", total=1) as task:
            plan = plan_inputs(model, example_inputs, part, calibration, loss_fn, given)
            task.advance()
        return plan
    return plan_channels(model, example_inputs, part, calibration, loss_fn, given, progress)


def plan_channels(model, example_inputs, part, calibration, loss_fn, given, progress):
    from ..unstructured.select import resolve_types
    from .plan_build import channel_plan

    with progress.task("structured pruning plan", total=3) as task:
        graph = build_graph(model, example_inputs, tuple(as_patterns(part.leaf_modules, "leaf_modules")), part.tracer,
                            module_rule=handler_for)
        task.advance()
        types = resolve_types(part.include_types) if part.include_types is not None else None
        mark_selection(graph, model, part, include_types=types)
        crit = make_criterion(part.criterion, part.seed)
        calibrate(crit, model, graph, calibration, loss_fn, blocks=part.blocks, max_memory=part.max_memory)
        scores = score_groups(graph, model, crit, part)
        task.advance()
        total, layers = layer_macs(graph)
        damage = None
        if getattr(part, "latency_target", None) is not None and part.latency_allocation == "measured":
            from .latency_damage import MeasuredDamage

            damage = MeasuredDamage(model, channel_plan(model, graph, scores, {}, given, total, layers, None),
                                    limited(calibration, part.calibration_batches), loss_fn)
        removed = select(graph, model, example_inputs, scores, part, total=total, layers=layers, damage=damage)
        plan = channel_plan(model, graph, scores, removed, given, total, layers, getattr(graph, "macs", None))
        if getattr(graph, "latency", None) is not None and part.latency_checks != 0:
            removed, plan = _check_latency(model, graph, example_inputs, scores, part, removed, given, total, layers,
                                           damage)
        if getattr(graph, "latency", None) is not None:
            plan._layout["latency"] = graph.latency  # predicted latency per layer and chosen widths (plan.latency)
        task.advance()
    log.info("structured: %d groups, %d to prune, %d left out (describe_groups lists why)",
             len(graph.groups), sum(1 for v in removed.values() if len(v)),
             sum(1 for g in graph.groups if not len(g.prunable)))
    return plan


def _check_latency(model, graph, example_inputs, scores, part, removed, given, total, layers, damage=None):
    """The latency allocation checked on the real pruned model and re-aimed (:func:`.latency.meet_measured`)."""
    from .latency import allocate
    from .latency_check import CHECKS, meet_measured
    from .plan_build import channel_plan

    fixed = _fixed_widths(graph, scores, part, model)

    def build(rem):
        plan = channel_plan(model, graph, scores, rem, given, total, layers, None)
        return plan.apply(copy.deepcopy(model), example_inputs)

    checks = CHECKS if part.latency_checks is None else part.latency_checks
    removed, graph.latency = meet_measured(
        model, example_inputs, removed, graph.latency,
        lambda aim_ms: allocate(model, graph, example_inputs, scores, part, fixed, aim_ms=aim_ms, damage=damage),
        build, checks)
    return removed, channel_plan(model, graph, scores, removed, given, total, layers, None)


def make_criterion(spec: Any, seed: int = 0):
    if isinstance(spec, str) and spec in CRITERIA and "seed" in inspect.signature(CRITERIA.get(spec)).parameters:
        return create_criterion(spec, seed=seed)
    return create_criterion(spec)


def mark_selection(graph: Graph, model: nn.Module, cfg, allow_empty: bool = False, include_types=None) -> None:
    """Leave out the groups the spec keeps: ``freeze`` (any member), ``ignore`` / ``exclude`` (the module's
    outputs: any member but its input channels), and groups not produced by ``include`` / ``include_types``.

    A selection that leaves no prunable group raises :class:`PruningError`, unless ``allow_empty``
    (describing a model never fails on that).
    """
    modules = dict(model.named_modules())  # include_types reads the layer objects
    freeze = to_names(model, as_patterns(getattr(cfg, "freeze", None), "freeze"))
    ignore = to_names(model, as_patterns(getattr(cfg, "ignore", None), "ignore")
                      + as_patterns(getattr(cfg, "exclude", None), "exclude"))
    include = to_names(model, as_patterns(getattr(cfg, "include", None), "include"))
    for g in graph.groups:
        if g.reason is not None:
            continue
        frozen = [n for n in g.module_names() if freeze and selects(model, n, freeze)]
        if frozen:
            g.reason = f"frozen: {frozen[0]}"
            continue
        kept = sorted({m.axis.module for m in g.members if m.axis.kind != "in"
                       and ignore and selects(model, m.axis.module, ignore)})
        if kept:
            g.reason = f"ignored: {kept[0]} (its output channels are kept)"
            continue
        producers = [member.axis.module for member in g.producers()]
        if include and not any(selects(model, n, include) for n in producers):
            g.reason = "not selected by include"
        elif include_types and not any(isinstance(modules[n], tuple(include_types)) for n in producers):
            g.reason = "not selected by include_types"
    if not allow_empty and (ignore or include or freeze) and not any(g.reason is None and len(g.prunable)
                                                                     for g in graph.groups):
        raise PruningError("the ignore / freeze / include selection leaves no prunable channel group; check the "
                           "module patterns (prunekit inspect lists the groups and why each is left out)")
    _check_layer_ratios(model, graph, cfg)


def _check_layer_ratios(model: nn.Module, graph: Graph, cfg) -> None:
    """Every layer_ratios pattern selects a layer that produces some group's channels."""
    producers = sorted({member.axis.module for g in graph.groups for member in g.producers()})
    for pat in getattr(cfg, "layer_ratios", None) or {}:
        if not any(selects(model, n, [pat]) for n in producers):
            raise PruningError(unmatched_message("layer_ratios", pat, model, producers, what="prunable layer")
                               .replace("module names look like", "prunable layers"))


def score_groups(graph: Graph, model: nn.Module, crit, cfg) -> Dict[int, np.ndarray]:
    out = {}
    for g in graph.groups:
        if g.reason is None and len(g.prunable):
            s = np.asarray(crit.group_scores(g, model=model, reduction=cfg.reduction, normalize=cfg.normalize), dtype=float)
            if s.shape != (len(g.atoms),):
                raise PruningError(f"criterion {crit!r} returned {s.shape} scores for a group of {len(g.atoms)} channels")
            out[g.index] = s
    return out


def _override(g, cfg, model: Optional[nn.Module]) -> Optional[float]:
    """The layer_ratios ratio of group ``g``: the first pattern selecting one of its producers wins."""
    ratios = getattr(cfg, "layer_ratios", None) or {}
    for pat, r in ratios.items():
        if any(selects(model, m.axis.module, [pat]) for m in g.producers()):
            return float(r)
    return None


def removal_for_ratio(graph: Graph, scores: Dict[int, np.ndarray], ratio: float, cfg,
                      model: Optional[nn.Module] = None) -> Dict[int, np.ndarray]:
    """Atoms to remove per group for one ratio (overrides, local/global counts, round_to, divisions)."""
    groups = [g for g in graph.groups if g.index in scores]
    fixed = {g.index: _override(g, cfg, model) for g in groups}
    counts = {gi: local_count(graph.groups[gi], r) for gi, r in fixed.items() if r is not None}
    rest = [g for g in groups if fixed[g.index] is None]
    if cfg.scope == "local":
        counts.update({g.index: local_count(g, ratio) for g in rest})
    else:
        counts.update(global_counts(rest, scores, ratio, DEFAULT_FLOOR if cfg.layer_floor is None else cfg.layer_floor))
    if getattr(cfg, "uniform", False):
        counts = uniform_counts(graph, counts)
    removed = {}
    for gi, count in counts.items():
        g = graph.groups[gi]
        atoms = choose(g, scores[gi], round_count(g, count, cfg.round_to))
        if g.divisions and not division_consistent(g, atoms):
            atoms = atoms[:0]
        removed[gi] = atoms
    return removed


_BLOCK_NUMBER = re.compile(r"(?<![^.])\d+(?![^.])")  # a whole dotted name part made of digits


def group_role(g) -> tuple:
    """What a group is, up to block numbers: its members' (module name with numbers as '#', axis kind) and its
    size. ``layers.0.mlp`` and ``layers.5.mlp`` groups share a role."""
    members = tuple(sorted({(_BLOCK_NUMBER.sub("#", m.axis.module), m.axis.kind) for m in g.members}))
    return members, len(g.atoms)


def uniform_counts(graph: Graph, counts: Dict[int, int]) -> Dict[int, int]:
    """Every group of a role removes the role's mean count (rounded), so analogous blocks keep equal widths."""
    roles: Dict[tuple, List[int]] = {}
    for gi in counts:
        roles.setdefault(group_role(graph.groups[gi]), []).append(gi)
    out = dict(counts)
    for members in roles.values():
        mean = int(round(sum(counts[gi] for gi in members) / len(members)))
        for gi in members:
            out[gi] = mean
    return out


def select(graph: Graph, model: nn.Module, example_inputs, scores, cfg, *, total=None,
           layers=None, damage=None) -> Dict[int, np.ndarray]:
    if getattr(cfg, "latency_target", None) is not None:
        return select_latency(graph, model, example_inputs, scores, cfg, damage)
    if cfg.macs_target is None:
        removed = removal_for_ratio(graph, scores, cfg.ratio, cfg, model)
        if cfg.ratio > 0 and not any(len(v) for v in removed.values()) and not scores:
            raise PruningError("no prunable channel group was found (see describe_groups for the reasons)")
        return removed
    if total is None:
        total, layers = layer_macs(graph)
    target = resolve_target(cfg.macs_target, total)
    flat = lambda rem: {int(a) for v in rem.values() for a in v.tolist()}  # noqa: E731
    ratio = search_ratio(lambda r: flat(removal_for_ratio(graph, scores, r, cfg, model)),
                         lambda rem: estimate_macs(model, graph, rem, total, layers), target, total)
    graph.macs = {"before": total, "target": int(target), "ratio": ratio}
    return removal_for_ratio(graph, scores, ratio, cfg, model)


def select_latency(graph: Graph, model: nn.Module, example_inputs, scores, cfg, damage=None) -> Dict[int, np.ndarray]:
    """Removal per group that meets ``cfg.latency_target`` on the measured latency table (``layer_ratios`` groups are
    fixed at their ratio; ``damage``: measured candidate prices, ``latency_allocation="measured"``); the latency
    report is kept on ``graph.latency`` for the plan."""
    from .latency import allocate

    if not scores:
        raise PruningError("no prunable channel group was found (see describe_groups for the reasons)")
    removed, graph.latency = allocate(model, graph, example_inputs, scores, cfg, _fixed_widths(graph, scores, cfg, model),
                                      damage=damage)
    return removed


def _fixed_widths(graph: Graph, scores, cfg, model: nn.Module) -> Dict[int, int]:
    """Groups ``layer_ratios`` fixes: their count of removed channels."""
    return {g.index: local_count(g, r) for g in graph.groups if g.index in scores
            for r in [_override(g, cfg, model)] if r is not None}


def output_shapes(model: nn.Module, example_inputs, check: bool = False):
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            out = run_model(model, example_inputs)
    except Exception as exc:
        if check:
            raise PruningError(f"the pruned model no longer runs ({exc}); a reshape constant may be hard-coded") from exc
        raise
    finally:
        model.train(was)
    return _shapes(out)


def _shapes(out) -> list:
    """Shapes of the output tensors pruning keeps (``graph.export_capture.output_tensors``: every tensor of a
    nested output; of a Hugging Face output with ``logits``, the logits), in order."""
    return [tuple(t.shape) for t in output_tensors(out)]
