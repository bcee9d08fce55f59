"""Measuring the latency table (:mod:`.latency_table`) on this machine: which layer calls are timed, their real
inputs, every width of each axis timed in shuffled interleaved rounds, the dense model and the rest's size curve,
read from and written to the on-disk cache (:mod:`.latency_cache`)."""
from __future__ import annotations

import copy
import functools
import hashlib
import json
import logging
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .._inputs import Inputs, run_model, with_batch_size
from ..errors import ConfigError
from ..sparse.timing import interleaved_median
from .handlers import handler_for
from .latency_cache import cache_dir, cache_key, conditions
from .latency_cache import read_table as _read, write_table as _write
from .latency_table import REPEATS, Axis, LatencyTable, RestNode, SizeCurve, Unit, candidate_widths, curve_sizes

log = logging.getLogger(__name__)


def structure_digest(graph) -> str:
    """Every traced op with its layer type, configuration and output shape, and every parameter's shape."""
    gm = graph.captured.gm
    modules = dict(gm.named_modules())
    rows = []
    for node in gm.graph.nodes:
        what = str(node.target)
        if node.op == "call_module":
            m = modules[node.target]
            what = f"{type(m).__module__}.{type(m).__qualname__}({m.extra_repr()})"
        rows.append([node.op, what, list(graph.captured.shape(node) or ())])
    rows.append(sorted([n, list(p.shape)] for n, p in gm.named_parameters()))
    return hashlib.sha256(json.dumps(rows, default=str).encode()).hexdigest()


def build_table(model: nn.Module, graph, example_inputs: Inputs, groups: Sequence, *, batch: Optional[int] = None,
                threads: Optional[int] = None, backend: str = "torch", timer: Optional[Callable] = None,
                repeats: int = REPEATS, use_cache: bool = True) -> LatencyTable:
    """The latency table of ``model`` (traced as ``graph``) for the layers that ``groups`` (the prunable groups)
    narrow, measured under :func:`conditions` or read from the cache."""
    from ..measure.latency import eval_state, num_threads

    cond = conditions(example_inputs, batch=batch, threads=threads, backend=backend)
    inputs = with_batch_size(example_inputs, cond.batch) if batch is not None else example_inputs
    touched = np.zeros(len(graph.ids), dtype=bool)
    for g in groups:
        touched[g.atoms] = True
    units, rest = _units(model, graph, touched)
    path = cache_dir() / f"{cache_key(structure_digest(graph), cond)}.json"
    cached = _read(path) if use_cache else {}
    timer = timer or functools.partial(interleaved_median, repeats=repeats, warmup=2, statistic="min")
    calls = [0]

    def timed(label, candidates):
        calls[0] += 1
        return timer(label, candidates)

    have = cached.get("units", {})
    missing = [u for u in units if u.node not in have or any(a.kind not in have[u.node]["axes"] for a in u.axes)]
    if missing or "model_ms" not in cached:
        with eval_state(model), num_threads(cond.threads), torch.no_grad():
            model_ms, todo = [], {u.node for u in missing}
            sizes = record_inputs(model, inputs, graph, {u.node for u in units}, sizes_only=True)
            for chunk in held_chunks([u.node for u in units], sizes):
                part = [u for u in units if u.node in chunk]
                recorded = record_inputs(model, inputs, graph, set(chunk))
                for u in part:
                    if u.node in todo:
                        cached.setdefault("units", {})[u.node] = _time_unit(model, graph, u, recorded[u.node], timed)
                model_ms.append(_calibrate(model, inputs, part, recorded, cached, timed))
                del recorded
            cached["model_ms"] = min(model_ms)
    if rest and "rest_curve" not in cached:
        with num_threads(cond.threads), torch.no_grad():
            cached["rest_curve"] = _time_curve(max(r.numel for r in rest), timed)
    if calls[0] and use_cache:  # anything timed goes into the cache
        _write(path, cond, cached)
    for u in units:
        _fill(u, cached["units"][u.node])
    log.info("latency table: %d layers, dense %.3f ms (%s, batch %d, %d threads), %d timer calls, cache %s",
             len(units), cached["model_ms"], cond.backend, cond.batch, cond.threads, calls[0], path)
    curve = cached.get("rest_curve") or {"numel": [], "ms": []}
    return LatencyTable(cond, float(cached["model_ms"]), units, rest, len(graph.ids), str(path), calls[0],
                        SizeCurve([int(n) for n in curve["numel"]], [float(v) for v in curve["ms"]]))


def _time_curve(largest: int, timed) -> Dict[str, List[float]]:
    """The size curve: an out-of-place ``relu`` (it allocates its output, as most of the rest's ops do) on float32
    tensors of :func:`curve_sizes` elements, in the same interleaved rounds."""
    sizes = curve_sizes(largest)
    tensors = {n: torch.randn(n) for n in sizes}
    ms = timed("rest size curve", {str(n): (lambda x=tensors[n]: torch.relu(x)) for n in sizes})
    return {"numel": sizes, "ms": [float(ms[str(n)]) for n in sizes]}


def _units(model: nn.Module, graph, touched: np.ndarray) -> Tuple[List[Unit], List[RestNode]]:
    """Timed layer calls (a handled layer with one tensor input whose axes a prunable group touches) and the rest."""
    gm, captured, ids = graph.captured.gm, graph.captured, graph.ids
    modules = dict(gm.named_modules())
    kinds: Dict[str, List[str]] = {}
    for (module, kind), member in graph.prop.members.items():
        if len(member.ids) and not kind.startswith("param:"):
            kinds.setdefault(module, []).append(kind)
    units, rest = [], []
    for node in gm.graph.nodes:
        if node.op in ("placeholder", "output", "get_attr"):
            continue
        name = str(node.target) if node.op == "call_module" else None
        axes = []
        if name in kinds and handler_for(modules[name]) is not None and _single_input(node):
            seen = []
            for kind in kinds[name]:
                roots = ids.roots(graph.prop.members[(name, kind)].ids)
                if touched[roots].any() and not any(np.array_equal(np.sort(roots), s) for s in seen):
                    seen.append(np.sort(roots))
                    axes.append(Axis(kind, roots, candidate_widths(len(roots))))
        shape = captured.shape(node)
        if axes:
            units.append(Unit(node.name, name, axes, out_numel=int(np.prod(shape)) if shape else 0))
            continue
        if shape is None:
            continue
        lay = graph.values.get(node)
        dims = [ids.roots(d) for d in (lay.dims if lay is not None and hasattr(lay, "dims") else []) if d is not None]
        rest.append(RestNode(int(np.prod(shape)) if len(shape) else 1, dims))
    return units, rest


def _single_input(node) -> bool:
    import torch.fx as fx

    tensors = [a for a in list(node.args) + list(node.kwargs.values()) if isinstance(a, fx.Node)]
    return len(tensors) == 1 and isinstance(node.args[0], fx.Node) if node.args else False


HELD_BYTES = 256 << 20  # layer inputs held at once while timing (the rest is recorded again, chunk by chunk)


def held_chunks(order: Sequence[str], sizes: Dict[str, int], budget: Optional[int] = None) -> List[List[str]]:
    """``order`` (layer-call names) cut into consecutive chunks whose recorded inputs (``sizes``, bytes) stay within
    ``budget`` (default :data:`HELD_BYTES`; a call larger than it is a chunk of its own).

    The recorded inputs are held while their layers are timed, and what they hold is not free for the timed calls'
    outputs: glibc serves a large tensor from free space inside its heap when there is some (no page faults) and
    maps fresh pages otherwise. Measured here on a ResNet-50 at batch 16, 224 px, 1 thread: a process with 2 GB
    free in its heap ran it in 1490 ms, and 2250 ms once 3 GB of tensors were held (a fresh process: 2250 ms); with
    256 MB held, 1490 ms. Holding every input at once (1.3 GB) timed the table in the slow state while the same
    process then ran the pruned model in the fast one: the prediction was 23% off."""
    budget = HELD_BYTES if budget is None else budget
    chunks: List[List[str]] = []
    used = budget + 1
    for name in order:
        if used + sizes.get(name, 0) > budget and (not chunks or chunks[-1]):
            chunks.append([])
            used = 0
        chunks[-1].append(name)
        used += sizes.get(name, 0)
    return [c for c in chunks if c]


def record_inputs(model: nn.Module, inputs, graph, nodes: set, *, sizes_only: bool = False) -> Dict[str, Any]:
    """The input tensor of each wanted layer call at the measurement inputs (calls of one module in graph order);
    ``sizes_only``: its size in bytes instead (nothing is copied)."""
    order: Dict[str, List[str]] = {}
    for node in graph.captured.gm.graph.nodes:
        if node.op == "call_module":
            order.setdefault(str(node.target), []).append(node.name)
    seen: Dict[str, int] = {}
    out: Dict[str, torch.Tensor] = {}
    handles = []
    for module_name in {n for n, calls in order.items() if any(c in nodes for c in calls)}:
        def hook(mod, args, _name=module_name):
            i = seen.get(_name, 0)
            seen[_name] = i + 1
            if i < len(order[_name]) and args and isinstance(args[0], torch.Tensor):
                x = args[0]
                out.setdefault(order[_name][i], x.numel() * x.element_size() if sizes_only else x.detach().clone())
        handles.append(model.get_submodule(module_name).register_forward_pre_hook(hook))
    try:
        run_model(model, inputs)
    finally:
        for h in handles:
            h.remove()
    lost = sorted(nodes - set(out))
    if lost:
        raise ConfigError(f"latency table: layer call(s) {', '.join(lost[:3])} did not run on the measurement inputs; "
                          "measure at the example inputs' batch (leave latency_batch unset)")
    return out


def _variant(module: nn.Module, graph, name: str, x: torch.Tensor, node, removed: np.ndarray):
    """A copy of ``module`` and of its input with the positions of ``removed`` root atoms cut."""
    keep = {}
    for (mod, kind), member in graph.prop.members.items():
        if mod == name and len(member.ids) and not kind.startswith("param:"):
            k = np.nonzero(~removed[graph.ids.roots(member.ids)])[0]
            if len(k) < len(member.ids):
                keep[kind] = k
    variant = copy.deepcopy(module)
    if keep:
        handler_for(variant).prune(variant, keep)
    lay = graph.values.get(node.args[0])
    for d, ids in enumerate(lay.dims if lay is not None else []):
        if ids is not None and d < x.dim():
            k = np.nonzero(~removed[graph.ids.roots(ids)])[0]
            if len(k) < x.shape[d]:
                x = x.index_select(d, torch.as_tensor(k, dtype=torch.long))
    return variant, x.contiguous()


def _time_unit(model: nn.Module, graph, unit: Unit, x: torch.Tensor, timed) -> Dict[str, Any]:
    """Time ``unit`` at every grid width of each axis (interleaved per axis) and at the smallest widths."""
    node = next(n for n in graph.captured.gm.graph.nodes if n.name == unit.node)
    module = model.get_submodule(unit.module)
    n_ids = len(graph.ids)

    def call(removed):
        variant, xi = _variant(module, graph, unit.module, x, node, removed)
        return lambda: variant(xi)

    entry: Dict[str, Any] = {"module": unit.module, "axes": {}}
    smallest = np.zeros(n_ids, dtype=bool)
    for axis in unit.axes:
        candidates = {}
        for w in axis.widths:
            removed = np.zeros(n_ids, dtype=bool)
            removed[axis.roots[w:]] = True
            candidates[str(w)] = call(removed)
        smallest[axis.roots[axis.widths[0]:]] = True
        if len(unit.axes) > 1 and axis is unit.axes[-1]:
            candidates["min"] = call(smallest)
        ms = timed(f"{unit.node}:{axis.kind}", candidates)
        entry["axes"][axis.kind] = {"widths": list(axis.widths), "ms": [float(ms[str(w)]) for w in axis.widths]}
        if "min" in ms:
            entry["min_ms"] = float(ms["min"])
    # the dense time is each axis's widest point; their mean stands for the unit (they were timed in separate rounds)
    entry["dense_ms"] = float(np.mean([a["ms"][-1] for a in entry["axes"].values()]))
    entry.setdefault("min_ms", min(min(a["ms"]) for a in entry["axes"].values()))
    return entry


def _calibrate(model: nn.Module, inputs, units: List[Unit], recorded, cached: Dict[str, Any], timed) -> float:
    """The dense model and the dense ``units`` (one chunk of :func:`held_chunks`) in the same interleaved rounds:
    each unit's dense time under the same load as the model's (its width tables are scaled to it, so the rest,
    model minus units, is not a difference of times taken at different moments of a shared machine). Returns the
    model's time (the table's is the fastest over the chunks)."""
    modules = {u.node: model.get_submodule(u.module) for u in units}
    candidates = {"model": lambda: run_model(model, inputs)}
    candidates.update({u.node: (lambda m=modules[u.node], x=recorded[u.node]: m(x)) for u in units})
    ms = timed("model and layers", candidates)
    for u in units:
        entry = cached["units"][u.node]
        scale = float(ms[u.node]) / entry["dense_ms"] if entry["dense_ms"] > 0 else 1.0
        entry["axes"] = {k: {"widths": a["widths"], "ms": [v * scale for v in a["ms"]]}
                         for k, a in entry["axes"].items()}
        entry["min_ms"] *= scale
        entry["dense_ms"] = float(ms[u.node])
    return float(ms["model"])


def _fill(unit: Unit, entry: Dict[str, Any]) -> None:
    unit.dense_ms, unit.min_ms = float(entry["dense_ms"]), float(entry["min_ms"])
    for axis in unit.axes:
        a = entry["axes"][axis.kind]
        axis.widths, axis.ms = [int(w) for w in a["widths"]], [float(v) for v in a["ms"]]
        # every axis ends at the unit's dense time (its axes were timed in separate rounds), so the model meets it
        scale = unit.dense_ms / axis.ms[-1] if axis.ms[-1] > 0 else 1.0
        axis.ms = [v * scale for v in axis.ms]
