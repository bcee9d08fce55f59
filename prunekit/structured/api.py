"""prune_structured: trace -> group -> score -> choose -> remove, for channels, residual blocks or input features."""
from __future__ import annotations

import copy
import fnmatch
import inspect
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, Iterable, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .._inputs import Inputs, run_model
from ..errors import ConfigError, PruningError
from ..graph.groups import Graph, build_graph
from ..importance import CRITERIA, create_criterion
from ..progress import Progress, ensure
from .budget import estimate_macs, layer_macs, resolve_target, search_ratio
from .calibrate import calibrate
from .plan import get_plan, merge_plans, set_plan
from .remove import apply_attributes, apply_keeps, attribute_updates, empty_plan, keeps_from_removed
from .scoring import NORMALIZERS, REDUCTIONS
from .select import choose, division_consistent, global_counts, local_count, round_count

log = logging.getLogger(__name__)
GRANULARITIES = ("channel", "block", "input")


@dataclass
class StructuredConfig:
    """Settings of one structured pruning (the keyword arguments of :func:`prune_structured`)."""

    granularity: str = "channel"  # channel | block (residual blocks) | input (first Linear's input columns)
    criterion: Any = "l2"  # registered name or Criterion instance
    ratio: float = 0.5  # fraction of channels (blocks, features) to remove, in [0, 1)
    scope: str = "local"  # local: the ratio in every group; global: one ranking across groups
    layer_ratios: Optional[Dict[str, float]] = None  # module-name pattern -> ratio for the groups it produces
    ignore: Optional[Sequence[Any]] = None  # module names / fnmatch patterns / types / instances (as names) kept untouched
    include: Optional[Sequence[str]] = None  # if set, only groups produced by these module patterns are pruned
    include_types: Optional[Sequence[type]] = None  # if set, only groups produced by these layer types are pruned
    macs_target: Optional[float] = None  # keep this fraction (<= 1) or absolute count (> 1) of MACs instead of ratio
    round_to: Optional[int] = None  # kept channels per group rounded (up) to a multiple of this
    layer_floor: float = 0.1  # global scope: every group keeps at least this fraction
    reduction: str = "mean"  # how per-layer scores of a group combine: mean | sum | max | prod
    normalize: str = "mean"  # per-layer score normalisation before combining: mean | max | sum | none
    leaf_modules: Sequence[Any] = field(default_factory=tuple)  # modules fx must not trace into (kept whole)
    tracer: str = "auto"  # graph capture: auto (fx, torch.export if fx fails) | fx | export
    seed: int = 0  # for the random criterion

    def validate(self) -> None:
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"granularity must be one of {GRANULARITIES} for structured pruning, got {self.granularity!r}")
        if not isinstance(self.ratio, (int, float)) or not 0.0 <= float(self.ratio) < 1.0:
            raise PruningError(f"ratio must be in [0, 1), got {self.ratio!r}")
        for pat, r in (self.layer_ratios or {}).items():
            if not 0.0 <= float(r) < 1.0:
                raise PruningError(f"layer_ratios[{pat!r}] must be in [0, 1), got {r!r}")
        if self.scope not in ("local", "global"):
            raise ConfigError(f"scope must be 'local' or 'global', got {self.scope!r}")
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.normalize not in NORMALIZERS:
            raise ConfigError(f"normalize must be one of {NORMALIZERS}, got {self.normalize!r}")
        if self.round_to is not None and int(self.round_to) < 1:
            raise PruningError(f"round_to must be a positive integer, got {self.round_to!r}")


def prune_structured(model: nn.Module, example_inputs: Inputs, *, granularity: str = "channel", criterion: Any = "l2",
                     ratio: float = 0.5, scope: str = "local", layer_ratios=None, ignore=None, macs_target=None,
                     round_to=None, calibration: Optional[Iterable] = None, loss_fn: Optional[Callable] = None,
                     inplace: bool = False, seed: int = 0, progress: Optional[Progress] = None, exclude=None,
                     include=None, include_types=None, layer_floor: float = 0.1, reduction: str = "mean",
                     normalize: str = "mean", leaf_modules: Sequence[Any] = (), tracer: str = "auto",
                     **unused) -> nn.Module:
    """Physically remove channels / residual blocks / input features; returns the smaller model with its plan.

    ``model._prunekit_plan`` (see :func:`get_plan`) records what was kept, so :func:`apply_plan` can
    rebuild the shapes on a fresh instance before loading weights.
    """
    names = {id(m): n for n, m in model.named_modules()}
    ignore_all = [names.get(id(p), p) if isinstance(p, nn.Module) else p for p in list(ignore or []) + list(exclude or [])]
    cfg = StructuredConfig(
        granularity=granularity, criterion=criterion, ratio=ratio, scope=scope, layer_ratios=layer_ratios,
        ignore=ignore_all, include=include, include_types=include_types, macs_target=macs_target, round_to=round_to,
        layer_floor=layer_floor, reduction=reduction, normalize=normalize, leaf_modules=tuple(leaf_modules),
        tracer=tracer, seed=seed,
    )
    cfg.validate()
    if unused:
        log.debug("prune_structured ignores %s", sorted(unused))
    model = model if inplace else copy.deepcopy(model)
    progress = ensure(progress)
    if cfg.granularity == "block":
        from .depth import prune_blocks

        return prune_blocks(model, example_inputs, cfg, calibration)
    if cfg.granularity == "input":
        from .features import prune_inputs

        return prune_inputs(model, example_inputs, cfg, calibration, loss_fn)
    with progress.task("structured pruning", total=3) as task:
        graph = build_graph(model, example_inputs, cfg.leaf_modules, cfg.tracer)
        task.advance()
        mark_selection(graph, model, cfg)
        crit = make_criterion(cfg.criterion, cfg.seed)
        calibrate(crit, model, graph, calibration, loss_fn)
        scores = score_groups(graph, model, crit, cfg)
        task.advance()
        removed = select(graph, model, example_inputs, scores, cfg)
        remove_atoms(model, graph, removed, example_inputs)
        task.advance()
    left_out = sum(1 for g in graph.groups if not len(g.prunable))
    log.info("structured: %d groups, %d pruned, %d left out (describe_groups lists why)",
             len(graph.groups), sum(1 for v in removed.values() if len(v)), left_out)
    return model


def make_criterion(spec: Any, seed: int):
    if isinstance(spec, str) and spec in CRITERIA and "seed" in inspect.signature(CRITERIA.get(spec)).parameters:
        return create_criterion(spec, seed=seed)
    return create_criterion(spec)


def _matches(name: str, module: nn.Module, patterns: Sequence[Any]) -> bool:
    for pat in patterns:
        if isinstance(pat, type) and isinstance(module, pat):
            return True
        if isinstance(pat, str) and (name == pat or fnmatch.fnmatchcase(name, pat) or name.startswith(pat + ".")):
            return True
    return False


def mark_selection(graph: Graph, model: nn.Module, cfg: StructuredConfig) -> None:
    """Leave out groups touching ignored modules, and (with include / include_types) groups not asked for."""
    modules = dict(model.named_modules())
    _check_patterns_match(modules, graph, cfg)
    for g in graph.groups:
        if g.reason is not None:
            continue
        hit = [n for n in g.module_names() if cfg.ignore and _matches(n, modules[n], cfg.ignore)]
        if hit:
            g.reason = f"ignored: {hit[0]}"
            continue
        producers = [gm.member.module for gm in g.producers()]
        if cfg.include and not any(_matches(n, modules[n], cfg.include) for n in producers):
            g.reason = "not selected by include"
        elif cfg.include_types and not any(isinstance(modules[n], tuple(cfg.include_types)) for n in producers):
            g.reason = "not selected by include_types"
    if (cfg.ignore or cfg.include) and not any(g.reason is None and len(g.prunable) for g in graph.groups):
        raise PruningError("the ignore/include selection leaves no prunable channel group; check the module names")


def _check_patterns_match(modules: Dict[str, nn.Module], graph: Graph, cfg: StructuredConfig) -> None:
    """A module-name pattern that matches nothing is almost always a typo: say so instead of ignoring it."""
    named = [(n, m) for n, m in modules.items() if n]
    for key, patterns in (("ignore", cfg.ignore), ("include", cfg.include)):
        for pat in patterns or []:
            if isinstance(pat, str) and not any(_matches(n, m, [pat]) for n, m in named):
                raise PruningError(f"{key} pattern {pat!r} matches no module; module names look like {named[0][0]!r}")
    producers = {gm.member.module for g in graph.groups for gm in g.producers()}
    for pat in cfg.layer_ratios or {}:
        if not any(n == pat or fnmatch.fnmatchcase(n, pat) for n in producers):
            raise PruningError(f"layer_ratios pattern {pat!r} matches no prunable layer; e.g. {sorted(producers)[:3]}")


def score_groups(graph: Graph, model: nn.Module, crit, cfg: StructuredConfig) -> Dict[int, np.ndarray]:
    out = {}
    for g in graph.groups:
        if g.reason is None and len(g.prunable):
            s = np.asarray(crit.group_scores(g, model=model, reduction=cfg.reduction, normalize=cfg.normalize), dtype=float)
            if s.shape != (len(g.atoms),):
                raise PruningError(f"criterion {crit!r} returned {s.shape} scores for a group of {len(g.atoms)} channels")
            out[g.index] = s
    return out


def _override(g, cfg: StructuredConfig) -> Optional[float]:
    for pat, r in (cfg.layer_ratios or {}).items():
        if any(gm.member.module == pat or fnmatch.fnmatchcase(gm.member.module, pat) for gm in g.producers()):
            return float(r)
    return None


def removal_for_ratio(graph: Graph, scores: Dict[int, np.ndarray], ratio: float, cfg: StructuredConfig) -> Dict[int, np.ndarray]:
    """Atoms to remove per group for one ratio (overrides, local/global counts, round_to, divisions)."""
    groups = [g for g in graph.groups if g.index in scores]
    fixed = {g.index: _override(g, cfg) for g in groups}
    counts = {gi: local_count(graph.groups[gi], r) for gi, r in fixed.items() if r is not None}
    rest = [g for g in groups if fixed[g.index] is None]
    if cfg.scope == "local":
        counts.update({g.index: local_count(g, ratio) for g in rest})
    else:
        counts.update(global_counts(rest, scores, ratio, cfg.layer_floor))
    removed = {}
    for gi, count in counts.items():
        g = graph.groups[gi]
        atoms = choose(g, scores[gi], round_count(g, count, cfg.round_to))
        if g.divisions and not division_consistent(g, atoms):
            atoms = atoms[:0]
        removed[gi] = atoms
    return removed


def select(graph: Graph, model: nn.Module, example_inputs, scores, cfg: StructuredConfig) -> Dict[int, np.ndarray]:
    if cfg.macs_target is None:
        removed = removal_for_ratio(graph, scores, cfg.ratio, cfg)
        if cfg.ratio > 0 and not any(len(v) for v in removed.values()) and not scores:
            raise PruningError("no prunable channel group was found (see describe_groups for the reasons)")
        return removed
    total, layers = layer_macs(graph)
    target = resolve_target(cfg.macs_target, total)
    flat = lambda rem: {int(a) for v in rem.values() for a in v.tolist()}  # noqa: E731
    ratio = search_ratio(lambda r: flat(removal_for_ratio(graph, scores, r, cfg)),
                         lambda rem: estimate_macs(model, graph, rem, total, layers), target, total)
    graph.macs = {"before": total, "target": int(target), "ratio": ratio}
    return removal_for_ratio(graph, scores, ratio, cfg)


def remove_atoms(model: nn.Module, graph: Graph, removed: Dict[int, np.ndarray], example_inputs) -> Dict[str, Any]:
    """Slice the model, check it still runs with unchanged output shapes, and attach the plan."""
    before = _output_shapes(model, example_inputs)
    atoms = {int(a) for v in removed.values() for a in v.tolist()}
    plan = empty_plan()
    apply_keeps(model, keeps_from_removed(graph, atoms), plan)
    plan["attributes"] = attribute_updates(graph, atoms)
    apply_attributes(model, plan["attributes"])
    plan["groups"] = {str(gi): len(v) for gi, v in removed.items() if len(v)}
    if getattr(graph, "macs", None):
        plan["macs"] = dict(graph.macs)
    after = _output_shapes(model, example_inputs, check=True)
    if before != after:
        raise PruningError(f"pruning changed the output shapes {before} -> {after}; please report this model")
    set_plan(model, merge_plans(get_plan(model), plan))
    return plan


def _output_shapes(model: nn.Module, example_inputs, check: bool = False):
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
    """Shapes of every tensor in a (nested tuple / list / dict) model output, in order."""
    if isinstance(out, torch.Tensor):
        return [tuple(out.shape)]
    if isinstance(out, dict):
        return [s for k in sorted(out, key=str) for s in _shapes(out[k])]
    if isinstance(out, (tuple, list)):
        return [s for o in out for s in _shapes(o)]
    return []
