"""Calibration within a memory bound: a data-driven criterion fed block by block instead of by whole-model forwards.

:func:`calibrate_blocks` feeds a criterion what :func:`prunekit.importance.calibrate.calibrate` feeds it --
layer inputs (Wanda, SparseGPT) and activation statistics (activation, APoZ) of the same calibration batches --
but runs the model one block at a time (:mod:`prunekit.importance.blockwise`): block 0's inputs of every batch are
cached, block ``k`` runs on them with the criterion's hooks attached, its outputs become block ``k+1``'s inputs,
and the layers before the first block / after the last one are fed by the model's forward cut there. Alive at
once: one block's working activations, the cached inputs and outputs of one block (bounded in memory by
``max_memory``, the rest spilled to disk, see :mod:`prunekit.importance.activation_cache`) and the statistics.

The statistics equal whole-model calibration's: each layer sees the same inputs (the dense model's), accumulated
over the batches in the same order (activation statistics of a channel observed in several blocks are summed in
another order: equal up to float rounding). Under torchrun the statistics are then summed over the processes at
the same point as :func:`calibrate` does (:func:`~prunekit.importance.calibrate.share_statistics`).

Gradient criteria (Taylor) are not served: their backward runs through the whole model. Activation statistics
are read by hooks on the modules that compute the activations, so every watched activation must be a module's
output (an activation module such as nn.GELU, Hugging Face's activation layers); otherwise a
:class:`PruningError` says to calibrate the whole model.
"""
from __future__ import annotations

import contextlib
import itertools
from typing import Any, Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import PruningError
from .activation_cache import MemoryBudget, parse_memory
from .base import ACTIVATIONS, INPUTS
from .blockwise import PREFIX, SUFFIX, BlockRunner, Stage, calibration_mode, find_blocks
from .calibrate import batch_inputs, failed_here, activation_watch, checked_needs, module_calls, share_statistics
from .inputs import Layer, check_layer, check_seen, observe_inputs, weight_layers

ActivationCalls = Dict[str, List[Optional[Tuple[int, np.ndarray, Optional[int]]]]]


def calibration_inputs(batches: Iterable, max_batches: Optional[int]) -> List[Any]:
    """The model inputs of at most ``max_batches`` batches (``(inputs, targets)`` pairs or the inputs alone)."""
    if max_batches is not None:
        batches = itertools.islice(batches, max(0, int(max_batches)))
    return [batch_inputs(b) for b in batches]


def activation_calls(graph, name: str) -> ActivationCalls:
    """Module path -> per call, ``(dim, atoms, rank)`` of the watched activation it outputs (None: not watched).

    A torch.export graph: :func:`~prunekit.importance.calibrate.module_calls`; an fx graph: its ``call_module``
    activation nodes. :class:`PruningError` when some watched activation is not a module's output.
    """
    gm, watch = graph.captured.gm, activation_watch(graph)
    if getattr(graph.captured, "exported", False):
        calls = module_calls(gm, watch)
    else:
        calls = {}
        for node, (dim, atoms) in watch.items():
            if node.op != "call_module":
                calls = None
                break
            rank = getattr(node.meta.get("val", node.meta.get("tensor_meta")), "ndim", None)
            calls.setdefault(str(node.target), []).append((dim, atoms, rank))
    if calls is None:
        raise PruningError(f"criterion {name!r}: block-by-block calibration reads each activation from the module "
                           "that computes it, but some activation of this model is computed inline or by several "
                           "ops inside a module (not a module's output); calibrate the whole model (blocks=None)")
    return calls


class _Observer:
    """The criterion's hooks for one stage at a time: layer inputs and activation modules of that stage only."""

    def __init__(self, model: nn.Module, criterion, layers: Sequence[Layer], acts: ActivationCalls,
                 stages: Dict[str, Stage], batches: int):
        self.model, self.criterion, self.layers, self.acts = model, criterion, layers, acts
        self.stages, self.batches = stages, batches
        self.seen: Dict[str, int] = {key: 0 for key, _, _ in layers}
        self.count: Dict[str, int] = {path: 0 for path in acts}

    def needed(self) -> set:
        return set(self.stages.values())

    @contextlib.contextmanager
    def stage(self, stage: Stage) -> Iterator[None]:
        layers = [lay for lay in self.layers if self.stages.get(lay[0]) == stage]
        paths = [p for p in self.acts if self.stages.get(p) == stage]
        handles = [self.model.get_submodule(p).register_forward_hook(self._hook(p)) for p in paths]
        try:
            with observe_inputs(self.model, layers, self.criterion.observe_input) as seen:
                yield
            for key, n in seen.items():
                self.seen[key] += n
        finally:
            for h in handles:
                h.remove()

    def _hook(self, path: str):
        entries = self.acts[path]

        def fn(module, args, out):
            i = self.count[path] % len(entries)
            self.count[path] += 1
            if entries[i] is None:
                return
            dim, atoms, rank = entries[i]
            if not isinstance(out, torch.Tensor) or (rank is not None and out.dim() != rank):
                raise PruningError(f"activation module {path!r} returned {type(out).__name__} of another rank than "
                                   "in the traced graph: give calibration batches of the example inputs' shapes")
            self.criterion.observe_activation(atoms, out, dim)

        return fn

    def check(self) -> None:
        check_seen(self.seen, [key for key, _, _ in self.layers])
        for path, entries in self.acts.items():
            if self.count[path] != self.batches * len(entries):
                raise PruningError(f"activation module {path!r} ran {self.count[path]} times over {self.batches} "
                                   f"calibration batches, {len(entries)} per forward in the traced graph: give "
                                   "calibration batches of the example inputs' shapes, or calibrate the whole model "
                                   "(blocks=None)")


def calibrate_blocks(criterion, model: nn.Module, batches: Optional[Iterable], *, blocks: Any = "auto",
                     max_memory: Any = None, max_batches: Optional[int] = None, graph=None,
                     layers: Optional[Sequence[Layer]] = None) -> int:
    """:func:`~prunekit.importance.calibrate.calibrate` for ``"inputs"`` / ``"activations"`` criteria, run block by
    block (see the module docstring); returns the batch count (of every process, under torchrun).

    ``blocks``: ``"auto"`` (the model's one ``nn.ModuleList`` of repeated layers) or the list's dotted name
    (``"model.layers"``); ``max_memory``: the most bytes of cached block inputs / outputs kept in memory (an int
    or ``"2GB"``; None: no bound), the rest goes to a temporary folder removed afterwards. ``graph`` and
    ``layers`` as for :func:`calibrate`. Eval mode, no_grad and no key/value cache during the passes; every
    module's training flag is restored afterwards.
    """
    needs = checked_needs(criterion, batches, graph, refuse_gradients=True)
    if not needs:
        return 0
    name = getattr(criterion, "name", type(criterion).__name__)
    limit = parse_memory(max_memory)
    list_name, block_list = find_blocks(model, blocks)
    layers = (weight_layers(model) if layers is None else list(layers)) if INPUTS in needs else []
    for key, module, param in layers:
        check_layer(key, module, param)
    acts = activation_calls(graph, name) if ACTIVATIONS in needs else {}
    inputs = calibration_inputs(batches, max_batches)
    criterion.reset()
    try:
        with calibration_mode(model, getattr(getattr(graph, "captured", None), "gm", None)), \
                MemoryBudget(limit) as budget:
            runner = BlockRunner(model, list_name, block_list, inputs, budget)
            try:
                if inputs:
                    _run(runner, model, criterion, layers, acts)
            finally:
                runner.close()
    except BaseException:
        failed_here()
        raise
    seen = share_statistics(criterion, len(inputs))
    if seen == 0:
        raise PruningError("the calibration iterable yielded no batches")
    return seen


def _run(runner: BlockRunner, model: nn.Module, criterion, layers, acts: ActivationCalls) -> None:
    modules = {key: module for key, module, _ in layers}  # weight keys and module paths never collide
    modules.update({path: model.get_submodule(path) for path in acts})
    stages = runner.layout(modules)
    observe = _Observer(model, criterion, layers, acts, stages, len(runner.inputs))
    needed = observe.needed()
    last = len(runner) - 1 if SUFFIX in needed else max([s for s in needed if isinstance(s, int)], default=-1)
    with observe.stage(PREFIX):
        runner.capture()
    for k in range(last + 1):
        with observe.stage(k):
            out = runner.run_block(k, keep=k < last or SUFFIX in needed)
        if out is not None:
            runner.advance(out)
    if SUFFIX in needed:
        with observe.stage(SUFFIX):
            runner.run_suffix()
    observe.check()
