"""Latency lookup table: every prunable layer timed on this machine at a grid of widths, cached on disk.

As NetAdapt and AMC do, the latency of a pruned model is predicted from measurements, not from MACs. Each layer
call the pruning can narrow (a *unit*: a Conv / Linear / norm layer whose channels a prunable group changes) is
timed alone, on its real input at the measurement batch, at a grid of widths along each of its axes (input and
output channels), with the other axes dense; the widths include the dense one and multiples of 4 / 8 / 16 (the
widths CPU kernels vectorise over). Times are the fastest of shuffled interleaved rounds
(:func:`prunekit.sparse.interleaved_median` with ``statistic="min"``, every width of one axis in the same rounds) at
the current ``torch.get_num_threads()``: on a shared machine other processes only ever add time, and a median
taken under load flattens the differences between widths (measured here: a 4-channel convolution's median 5x its
minimum, with the ordering of the widths lost). A monotone
(isotonic) fit removes timing noise: a layer never predicts faster for more channels, and a width whose fit equals
a wider one's is dominated (the allocation snaps to the wider one).

A unit's time at widths ``(w_in, w_out)``: ``t0 + (t_dense - t0) * r_in(w_in) * r_out(w_out)`` with
``r(w) = (fit(w) - t0) / (t_dense - t0)`` and ``t0`` its time at the smallest grid widths (one axis: the fit itself).
Everything the table does not time (activations, adds, pooling, the un-narrowed layers) is the *rest*: the dense
model's measured latency minus its units' dense times, shared among the rest's ops by a measured *size curve* (the
time of an out-of-place elementwise op on a tensor of n elements, timed at a geometric grid of n up to the rest's
largest tensor): a rest op of n elements that keeps n' costs ``curve(n') / curve(n)`` of its share. The cost per
element is not constant: measured on a ResNet-50 at batch 16, 224 px, 1 thread, ``relu`` on 12.8M elements took
28.5 ms and on 6.4M 5.7 ms (a tensor above glibc's mmap threshold is fresh pages on every call), and scaling the
rest by elements kept predicted 440 ms where the pruned model's rest measured about 100 ms.

The table is cached as JSON under ``$PRUNEKIT_CACHE_DIR/latency`` (else ``~/.cache/prunekit/latency``), in a file
named by a digest of the model's structure (every traced op with its layer type and shapes), the backend, batch,
input shapes, thread count, torch version and this CPU's model and flags; units missing from a cached file are
timed and added, so a second run on the same machine times nothing. This module is the table and its
predictions; :mod:`.latency_timing` measures it (:func:`~.latency_timing.build_table`).
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch
from torch import nn

from .handlers import handler_for
from .latency_cache import FORMAT, Conditions

log = logging.getLogger(__name__)

MAX_POINTS = 16  # most grid widths per axis
REPEATS = 9  # interleaved rounds per axis
CURVE_POINTS = 10  # sizes the rest's size curve is timed at


def candidate_widths(n: int, max_points: int = MAX_POINTS) -> List[int]:
    """Widths an axis of ``n`` channels is timed at: multiples of a step (4 below 24 channels, 8 below 256, else 16,
    coarsened to at most ``max_points``) and ``n`` itself."""
    if n <= 4:
        return list(range(1, n + 1))
    step = 4 if n < 24 else 8 if n < 256 else 16
    k = max(1, math.ceil((n // step) / (max_points - 1)))
    widths = list(range(step * k, n, step * k))
    return sorted(set(widths) | {n})


def isotonic(values: Sequence[float]) -> List[float]:
    """The non-decreasing sequence closest to ``values`` in least squares (pool adjacent violators)."""
    blocks: List[List[float]] = []  # [sum, count]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] / blocks[-2][1] > blocks[-1][0] / blocks[-1][1]:
            s, c = blocks.pop()
            blocks[-1][0] += s
            blocks[-1][1] += c
    out: List[float] = []
    for s, c in blocks:
        out.extend([s / c] * int(c))
    return out


@dataclass
class Axis:
    """One axis of a unit the pruning can narrow: its positions' root atoms and the timed widths."""

    kind: str  # the layer's member kind ("in", "out", "chan", ...)
    roots: np.ndarray  # root atom of every position along the axis
    widths: List[int] = field(default_factory=list)
    ms: List[float] = field(default_factory=list)  # measured median per width (other axes dense)

    @property
    def size(self) -> int:
        return len(self.roots)

    @property
    def fitted(self) -> List[float]:
        return isotonic(self.ms)

    def at(self, width: float) -> float:
        """The fitted time at ``width`` (piecewise linear between grid widths; held below the smallest)."""
        return float(np.interp(width, self.widths, self.fitted))

    def fastest_widths(self, rel_tol: float = 0.0) -> List[int]:
        """Grid widths no wider width beats: where the fit is flat, only the widest width of the flat run."""
        fit = self.fitted
        return [w for i, w in enumerate(self.widths) if i == len(fit) - 1 or fit[i + 1] > fit[i] * (1 + rel_tol)]


@dataclass
class Unit:
    """One timed layer call (an fx node of a layer module)."""

    node: str  # fx node name
    module: str  # module name
    axes: List[Axis]
    dense_ms: float = 0.0
    min_ms: float = 0.0  # every axis at its smallest grid width
    out_numel: int = 0  # elements of its output (weights the rest's scaling in LatencyTable.predict_model)

    def time(self, kept: Sequence[float]) -> float:
        """Predicted milliseconds with ``kept[i]`` positions kept along axis ``i``."""
        if len(self.axes) == 1:
            return self.axes[0].at(kept[0])
        span = self.dense_ms - self.min_ms
        if span <= 0:
            return self.dense_ms
        r = 1.0
        for axis, k in zip(self.axes, kept):
            r *= max(0.0, (axis.at(k) - self.min_ms) / span)
        return self.min_ms + span * r

    def kept(self, removed: np.ndarray) -> List[int]:
        """Kept positions per axis under ``removed`` (a boolean mask over root atoms)."""
        return [int(a.size - np.count_nonzero(removed[a.roots])) for a in self.axes]


@dataclass
class RestNode:
    """An op the table does not time: its output elements and the root atoms of each tracked dim."""

    numel: int
    dims: List[np.ndarray]

    def kept_fraction(self, removed: np.ndarray) -> float:
        f = 1.0
        for roots in self.dims:
            f *= 1.0 - np.count_nonzero(removed[roots]) / max(1, len(roots))
        return f


@dataclass
class SizeCurve:
    """Time of the rest's typical op against its tensor's element count (non-decreasing; linear in between and
    below the smallest size, proportional above the largest)."""

    numel: List[int]
    ms: List[float]

    def __call__(self, n: float) -> float:
        if not self.numel:
            return float(n)  # no curve: cost proportional to the elements, as before the curve was measured
        fit = isotonic(self.ms)
        lo, hi = self.numel[0], self.numel[-1]
        if n <= lo:
            return fit[0] * n / lo if lo > 0 else fit[0]
        if n >= hi:
            return fit[-1] * n / hi
        return float(np.interp(n, self.numel, fit))


def curve_sizes(largest: int, points: int = CURVE_POINTS) -> List[int]:
    """Element counts the size curve is timed at: geometric from 4096 (or less) up to ``largest``."""
    largest = max(1, int(largest))
    lo = min(4096, largest)
    return sorted({int(round(v)) for v in np.geomspace(lo, largest, num=max(2, points))})


@dataclass
class LatencyTable:
    """The measured latency model of one traced model under one set of :class:`Conditions`."""

    conditions: Conditions
    model_ms: float  # measured latency of the dense model
    units: List[Unit]
    rest: List[RestNode]
    n_ids: int  # size of the root-atom space (masks passed to predict are this long)
    path: Optional[str] = None  # the cache file
    timed_calls: int = 0  # timer calls this build made (0: everything came from the cache)
    curve: SizeCurve = field(default_factory=lambda: SizeCurve([], []))  # the rest's cost by tensor size

    @property
    def units_ms(self) -> float:
        return float(sum(u.dense_ms for u in self.units))

    @property
    def rest_ms(self) -> float:
        return max(0.0, self.model_ms - self.units_ms)

    def rest_cost(self, node: RestNode, removed: Optional[np.ndarray] = None) -> float:
        """``node``'s weight in the rest (the size curve at its kept elements; all of them without ``removed``)."""
        return self.curve(node.numel * (1.0 if removed is None else node.kept_fraction(removed)))

    def rest_fraction(self, removed: np.ndarray) -> float:
        total = sum(self.rest_cost(r) for r in self.rest)
        return 1.0 if not total else sum(self.rest_cost(r, removed) for r in self.rest) / total

    def predict(self, removed: np.ndarray) -> float:
        """Predicted milliseconds of the model with the root atoms ``removed`` (a boolean mask) cut."""
        return float(sum(u.time(u.kept(removed)) for u in self.units) + self.rest_ms * self.rest_fraction(removed))

    def predict_model(self, model: nn.Module) -> float:
        """Predicted milliseconds of ``model``, a channel-pruned copy of the model this table was measured on: each
        timed layer looked up at its current widths, the rest scaled by the size curve at the layers' kept outputs."""
        total, out_el, kept_el = 0.0, 0.0, 0.0
        for u in self.units:
            module = model.get_submodule(u.module)
            kept = [min(a.size, _axis_width(module, a.kind, a.size)) for a in u.axes]
            total += u.time(kept)
            frac = float(np.prod([k / a.size for a, k in zip(u.axes, kept) if a.kind in ("out", "chan", "embed")]))
            out_el += self.curve(u.out_numel)
            kept_el += self.curve(u.out_numel * frac)
        dense = self.predict(np.zeros(self.n_ids, dtype=bool))
        scale = self.model_ms / dense if dense > 0 else 1.0  # calibrated as the allocation is: dense = measured
        return float(total + self.rest_ms * (kept_el / out_el if out_el else 1.0)) * scale

    def per_unit(self, removed: np.ndarray) -> Dict[str, Dict[str, Any]]:
        """Per timed layer call: dense and predicted ms and (dense, kept) widths per axis."""
        out = {}
        for u in self.units:
            kept = u.kept(removed)
            out[u.node] = {"module": u.module, "dense_ms": u.dense_ms, "predicted_ms": u.time(kept),
                           "widths": {a.kind: [a.size, k] for a, k in zip(u.axes, kept)}}
        return out

    def to_dict(self) -> Dict[str, Any]:
        return {"format": FORMAT, "conditions": self.conditions.as_dict(), "torch": torch.__version__,
                "model_ms": self.model_ms, "rest_curve": {"numel": self.curve.numel, "ms": self.curve.ms},
                "units": {u.node: {"module": u.module, "dense_ms": u.dense_ms, "min_ms": u.min_ms,
                                   "axes": {a.kind: {"widths": a.widths, "ms": a.ms} for a in u.axes}}
                          for u in self.units}}


# --- building --------------------------------------------------------------------------------------------------


_WIDTH_ATTRS = {"in": ("in_channels", "in_features"), "out": ("out_channels", "out_features"),
                "chan": ("num_features",)}


def _axis_width(module: nn.Module, kind: str, size: int) -> int:
    """The current width of a layer axis: its size attribute, else the sliced parameter's length, else ``size``."""
    for attr in _WIDTH_ATTRS.get(kind, ()):
        if isinstance(getattr(module, attr, None), int):
            return int(getattr(module, attr))
    handler = handler_for(module)
    for path, dim, imap in (handler.param_slices(module, kind) if handler is not None else []):
        t = module.get_parameter(path) if path in dict(module.named_parameters()) else None
        if t is not None and dim < t.dim():
            return int(t.shape[dim]) // (1 if imap is None else len(np.asarray(imap)[0]))
    return size
