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
from ..importance.aggregate import NORMALIZERS, REDUCTIONS
from ..progress import Progress, ensure
from .budget import estimate_macs, layer_macs, resolve_target, search_ratio
from .calibrate import calibrate
from .handlers import handler_for
from .plan import get_plan, merge_plans, set_plan
from .remove import apply_attributes, apply_keeps, attribute_updates, empty_plan, keeps_from_removed
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
        if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0.0 <= float(self.ratio) < 1.0:
            raise PruningError(f"ratio must be in [0, 1), got {self.ratio!r}")
        for pat, r in (self.layer_ratios or {}).items():
            if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0.0 <= float(r) < 1.0:
                raise PruningError(f"layer_ratios[{pat!r}] must be in [0, 1), got {r!r}")
        if self.scope not in ("local", "global"):
            raise ConfigError(f"scope must be 'local' or 'global', got {self.scope!r}")
        if self.reduction not in REDUCTIONS:
            raise ConfigError(f"reduction must be one of {REDUCTIONS}, got {self.reduction!r}")
        if self.normalize not in NORMALIZERS:
            raise ConfigError(f"normalize must be one of {NORMALIZERS}, got {self.normalize!r}")
        if self.round_to is not None and int(self.round_to) < 1:
            raise PruningError(f"round_to must be a positive integer, got {self.round_to!r}")


def _as_list(patterns) -> list:
    """``None`` -> ``[]``; one pattern (a string, a type or a module) -> ``[it]``; else the list."""
    if patterns is None:
        return []
    if isinstance(patterns, (str, type, nn.Module)):
        return [patterns]
    return list(patterns)


STRUCTURED_DEFAULTS: Dict[str, Any] = dict(
    criterion="l2", ratio=0.5, scope="local", layer_ratios=None, ignore=None, macs_target=None, round_to=None,
    calibration=None, loss_fn=None, inplace=False, seed=0, progress=None, exclude=None, include=None,
    include_types=None, layer_floor=0.1, reduction="mean", normalize="mean", leaf_modules=(), tracer="auto",
)
""":func:`prune_structured`'s defaults: an option a granularity does not use may stay at its default."""


def check_structured_patterns(model: nn.Module, *, ignore=None, exclude=None, include=None, layer_ratios=None,
                              defaults: Sequence[str] = ()) -> None:
    """Every ignore / exclude / include / layer_ratios name pattern matches a module of ``model`` (before tracing).

    Patterns are module names, fnmatch globs or prefixes (a module's children); types and module instances
    are accepted in ignore / exclude / include too (an instance must belong to ``model``). ``defaults``:
    options whose patterns were not given by the user (an unmatched one is only logged).
    """
    from ..unstructured.select import complain, unmatched_pattern

    named = [(n, m) for n, m in model.named_modules() if n]
    names = [n for n, _ in named]
    ids = {id(m) for _, m in model.named_modules()}
    for key, patterns in (("ignore", ignore), ("exclude", exclude), ("include", include)):
        for pat in _as_list(patterns):
            if isinstance(pat, nn.Module):
                if id(pat) not in ids:
                    raise PruningError(f"{key} lists a {type(pat).__name__} instance that is not a submodule of "
                                       f"{type(model).__name__}; pass module names such as {names[:3]}")
            elif isinstance(pat, str):
                if not any(_matches(n, m, [pat]) for n, m in named):
                    complain(unmatched_pattern(key, pat, model, names, what="module"), key, defaults)
            elif not isinstance(pat, type):
                raise ConfigError(f"{key} takes module names / patterns, module types or module instances, "
                                  f"got {pat!r} ({type(pat).__name__})")
    if layer_ratios is not None and not isinstance(layer_ratios, dict):
        raise PruningError(f"layer_ratios must be a dict {{name pattern: ratio}}, got {type(layer_ratios).__name__}")
    for pat in layer_ratios or {}:
        if not any(n == pat or fnmatch.fnmatchcase(n, str(pat)) for n in names):
            complain(unmatched_pattern("layer_ratios", str(pat), model, names, what="module"), "layer_ratios", defaults)


def check_structured_request(model: nn.Module, *, granularity: str = "channel", criterion: Any = "l2",
                             ratio: Optional[float] = 0.5, scope: str = "local", layer_ratios=None, ignore=None,
                             exclude=None, include=None, include_types=None, macs_target=None, round_to=None,
                             layer_floor: float = 0.1, reduction: str = "mean", normalize: str = "mean",
                             leaf_modules: Sequence[Any] = (), tracer: str = "auto", seed: int = 0,
                             calibration: Optional[Iterable] = None, loss_fn: Optional[Callable] = None,
                             inplace: bool = False, progress: Optional[Progress] = None) -> StructuredConfig:
    """Validate a structured request against ``model`` without tracing it; returns its :class:`StructuredConfig`."""
    from ..unstructured.select import resolve_types

    if ratio is None:
        if macs_target is None:
            raise PruningError("give ratio (fraction of channels to remove) or macs_target (fraction of MACs to keep)")
        ratio = 0.0  # unused: the MACs target decides how much goes
    if tracer not in ("auto", "fx", "export"):
        raise ConfigError(f"tracer must be 'auto', 'fx' or 'export', got {tracer!r}")
    if include_types is not None:
        include_types = resolve_types(include_types)
    check_structured_patterns(model, ignore=ignore, exclude=exclude, include=include, layer_ratios=layer_ratios)
    names = {id(m): n for n, m in model.named_modules()}
    ignore_all = [names.get(id(p), p) if isinstance(p, nn.Module) else p for p in _as_list(ignore) + _as_list(exclude)]
    include = [names.get(id(p), p) if isinstance(p, nn.Module) else p for p in _as_list(include)] or None
    cfg = StructuredConfig(
        granularity=granularity, criterion=criterion, ratio=ratio, scope=scope, layer_ratios=layer_ratios,
        ignore=ignore_all, include=include, include_types=include_types, macs_target=macs_target, round_to=round_to,
        layer_floor=layer_floor, reduction=reduction, normalize=normalize, leaf_modules=tuple(_as_list(leaf_modules)),
        tracer=tracer, seed=seed,
    )
    cfg.validate()
    crit = make_criterion(cfg.criterion, cfg.seed)
    if granularity != "block" and getattr(crit, "needs_data", False) and calibration is None:
        raise PruningError(f"criterion {getattr(crit, 'name', crit)!r} needs data: pass calibration=[(inputs, targets), ...]")
    return cfg


def prune_structured(model: nn.Module, example_inputs: Inputs, *, granularity: str = "channel", criterion: Any = "l2",
                     ratio: float = 0.5, scope: str = "local", layer_ratios=None, ignore=None, macs_target=None,
                     round_to=None, calibration: Optional[Iterable] = None, loss_fn: Optional[Callable] = None,
                     inplace: bool = False, seed: int = 0, progress: Optional[Progress] = None, exclude=None,
                     include=None, include_types=None, layer_floor: float = 0.1, reduction: str = "mean",
                     normalize: str = "mean", leaf_modules: Sequence[Any] = (), tracer: str = "auto",
                     **unknown) -> nn.Module:
    """Physically remove channels / residual blocks / input features; returns the smaller model with its plan.

    ``model._prunekit_plan`` (see :func:`get_plan`) records what was kept, so :func:`apply_plan` can
    rebuild the shapes on a fresh instance before loading weights. An unknown keyword, or an option
    ``granularity`` does not use (see ``prunekit.api.PRUNE_OPTIONS``), raises :class:`ConfigError`;
    the example inputs are run once first (a wrong shape / dtype raises :class:`InputError`).
    """
    from ..api import GRANULARITIES as ALL, check_options, run_once

    if granularity not in GRANULARITIES:
        hint = " (use prunekit.prune for granularity='weight')" if granularity in ALL else ""
        raise ConfigError(f"granularity must be one of {GRANULARITIES} for structured pruning, got {granularity!r}{hint}")
    options = dict(criterion=criterion, ratio=ratio, scope=scope, layer_ratios=layer_ratios, ignore=ignore,
                   macs_target=macs_target, round_to=round_to, calibration=calibration, loss_fn=loss_fn,
                   inplace=inplace, seed=seed, progress=progress, exclude=exclude, include=include,
                   include_types=include_types, layer_floor=layer_floor, reduction=reduction, normalize=normalize,
                   leaf_modules=leaf_modules, tracer=tracer, **unknown)
    check_options(granularity, options, STRUCTURED_DEFAULTS, caller="prune_structured")
    cfg = check_structured_request(model, granularity=granularity, **options)
    model = model if inplace else copy.deepcopy(model)
    run_once(model, example_inputs)  # a wrong example input is an InputError, not a tracing failure
    progress = ensure(progress)
    if cfg.granularity == "block":
        from .depth import prune_blocks

        with progress.task("block pruning", total=1) as task:
            model = prune_blocks(model, example_inputs, cfg, calibration)
            task.advance()
        return model
    if cfg.granularity == "input":
        from .features import prune_inputs

        with progress.task("input feature pruning", total=1) as task:
            model = prune_inputs(model, example_inputs, cfg, calibration, loss_fn)
            task.advance()
        return model
    with progress.task("structured pruning", total=3) as task:
        graph = build_graph(model, example_inputs, cfg.leaf_modules, cfg.tracer, module_rule=handler_for)
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


def mark_selection(graph: Graph, model: nn.Module, cfg: StructuredConfig, allow_empty: bool = False) -> None:
    """Leave out groups touching ignored modules, and (with include / include_types) groups not asked for.

    A pattern that matches nothing raises :class:`PruningError`; so does a selection that leaves no prunable
    group, unless ``allow_empty`` (describing a model never fails on that).
    """
    modules = dict(model.named_modules())
    _check_patterns_match(modules, graph, cfg)
    for g in graph.groups:
        if g.reason is not None:
            continue
        hit = [n for n in g.module_names() if cfg.ignore and _matches(n, modules[n], cfg.ignore)]
        if hit:
            g.reason = f"ignored: {hit[0]}"
            continue
        producers = [member.member.module for member in g.producers()]
        if cfg.include and not any(_matches(n, modules[n], cfg.include) for n in producers):
            g.reason = "not selected by include"
        elif cfg.include_types and not any(isinstance(modules[n], tuple(cfg.include_types)) for n in producers):
            g.reason = "not selected by include_types"
    if not allow_empty and (cfg.ignore or cfg.include) and not any(g.reason is None and len(g.prunable) for g in graph.groups):
        raise PruningError("the ignore/include selection leaves no prunable channel group; check the module names")


def _check_patterns_match(modules: Dict[str, nn.Module], graph: Graph, cfg: StructuredConfig) -> None:
    """A module-name pattern that matches nothing is almost always a typo: say so instead of ignoring it."""
    named = [(n, m) for n, m in modules.items() if n]
    for key, patterns in (("ignore", cfg.ignore), ("include", cfg.include)):
        for pat in patterns or []:
            if isinstance(pat, str) and not any(_matches(n, m, [pat]) for n, m in named):
                raise PruningError(f"{key} pattern {pat!r} matches no module; module names look like {named[0][0]!r}")
    producers = {member.member.module for g in graph.groups for member in g.producers()}
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
        if any(member.member.module == pat or fnmatch.fnmatchcase(member.member.module, pat) for member in g.producers()):
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
