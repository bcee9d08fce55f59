"""Weight pruning block by block (``blocks=``): each block is calibrated from cached inputs, pruned, and feeds the next.

The forward is cut into stages by :class:`prunekit.importance.blockwise.BlockRunner`: the layers before the first
block, each block, the layers after the last one. ``block_inputs`` says what a stage is calibrated on:

* ``"pruned"`` (the default): the outputs of everything before it already pruned. Within a stage the layers are
  calibrated and pruned in the order the forward calls them, one group at a time, a group being consecutive
  layers that read the very same input tensor (a block's q / k / v projections; pruning one cannot change the
  others' input). For SparseGPT this is the paper's sequential scheme and exactly what prunekit's whole-model
  SparseGPT (:func:`prunekit.unstructured.sparsegpt.prune_sequential`) computes -- every layer's Hessian from the
  model with all earlier layers pruned -- with one pass over one block per group instead of a whole-model
  forward per layer. For Wanda it is what Wanda's and llm-compressor's sequential code do across blocks.
* ``"dense"``: the dense model's activations: every stage is calibrated once, its outputs recorded before it is
  pruned, so each layer sees the inputs whole-model calibration gives it. Wanda's result then equals whole-model
  Wanda (``blocks=None``); SparseGPT reconstructs every layer from its dense Hessian (all of a block's Hessians
  held at once), a one-shot variant that does not see the error of earlier layers.

Under torchrun every process runs the same stages and groups, and the statistics of each group are summed over
the processes (:func:`prunekit.importance.calibrate.share_statistics`) before the group is pruned.
"""
from __future__ import annotations

import logging
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import torch
from torch import nn

from ..errors import PruningError
from ..importance.activation_cache import MemoryBudget, parse_memory
from ..importance.blockwise import PREFIX, SUFFIX, BlockRunner, calibration_mode, find_blocks
from ..importance.calibrate import failed_here, share_statistics
from ..importance.inputs import Layer, check_layer, check_seen, observe_inputs
from ..importance.sequential import calibration_inputs
from .masks import attach_refresh_hooks, set_mask
from .nm import input_axis, nm_mask
from .pruner import _layer_mask, layer_scores
from .sparsegpt import install, reconstruct_layer

log = logging.getLogger(__name__)

Decision = Tuple[Optional[torch.Tensor], torch.Tensor]  # (new weight or None: unchanged, keep mask)


def layer_mask(t, crit, part, overrides: Dict[str, float], nm: Optional[Tuple[int, int]]) -> Decision:
    """Target ``t``'s keep mask from ``crit``'s scores, decided for the layer alone (as weight pruning does with
    scope ``local`` / ``row``, a threshold or an N:M pattern); pruned weights stay pruned."""
    s = layer_scores(crit, t)
    if nm is not None:
        mask = nm_mask(s, nm[0], nm[1], input_axis(t.module))
    elif part.threshold is not None:
        mask = ((s > part.threshold) & torch.isfinite(s)).float()
    else:
        mask = _layer_mask(s, overrides.get(t.key, part.ratio), part.relative_to, part.scope, t)
    if mask.sum() == 0:
        log.warning("layer %s would lose every weight; its single most important weight is kept", t.key)
        mask.view(-1)[torch.argmax(s.view(-1))] = 1.0
    return None, mask


def _apply(t, decision: Decision) -> None:
    weight, keep = decision
    if weight is None:
        set_mask(t.module, t.param, keep)
    else:
        install(t, weight, keep)


def _groups(model: nn.Module, layers: Sequence[Layer], first_pass: Callable[[], None]) -> List[List[str]]:
    """``layers`` (keys) in the order one batch's pass calls them, consecutive ones reading the same tensor grouped."""
    order: List[str] = []
    source: Dict[str, int] = {}
    alive: list = []  # the inputs themselves, so no id is reused during the pass

    def sink(key, x):
        if key not in order:
            order.append(key)

    def hook(key):
        def fn(module, args):
            if key not in source and args and isinstance(args[0], torch.Tensor):
                source[key] = id(args[0])
                alive.append(args[0])
        return fn

    handles = [module.register_forward_pre_hook(hook(key)) for key, module, _ in layers]
    try:
        with observe_inputs(model, layers, sink):
            first_pass()
    finally:
        for h in handles:
            h.remove()
    groups: List[List[str]] = []
    for key in order + [k for k, _, _ in layers if k not in order]:
        if groups and key in source and source.get(groups[-1][-1]) == source[key]:
            groups[-1].append(key)
        else:
            groups.append([key])
    return groups


def prune_blocks(model: nn.Module, targets, crit, calibration, part, *, overrides: Dict[str, float],
                 removal: Optional[Callable[[object, torch.Tensor], int]] = None,
                 nm: Optional[Tuple[int, int]] = None) -> None:
    """Prune ``targets`` of ``model`` in place, block by block (see the module docstring).

    ``part``: the weight part of the spec (``blocks``, ``max_memory``, ``block_inputs``, ``calibration_batches``,
    ``ratio``, ``threshold``, ``scope``, ``relative_to``); ``overrides``: per-key ratios. A reconstructing
    criterion (SparseGPT) rewrites the kept weights, ``removal(target, dead)`` saying how many to prune;
    any other decides each layer's mask by :func:`layer_mask`.
    """
    for t in targets:
        check_layer(t.key, t.module, t.param)
    limit = parse_memory(part.max_memory)
    list_name, block_list = find_blocks(model, part.blocks)
    inputs = calibration_inputs(calibration, part.calibration_batches)
    if not inputs:
        share_statistics(crit, 0)  # under torchrun: every process raises, naming the empty ones
        raise PruningError("the calibration iterable yielded no batches")
    if crit.reconstructs:
        decide = lambda t: reconstruct_layer(t, crit, removal, nm)  # noqa: E731
    else:
        decide = lambda t: layer_mask(t, crit, part, overrides, nm)  # noqa: E731
    try:
        with calibration_mode(model), MemoryBudget(limit) as budget:
            runner = BlockRunner(model, list_name, block_list, inputs, budget)
            try:
                _Stages(model, runner, targets, crit, decide, part.block_inputs).run()
            finally:
                runner.close()
    except BaseException:
        failed_here()
        raise
    crit.reset()


class _Stages:
    """One run of :func:`prune_blocks`: the stages in order, each calibrated and pruned."""

    def __init__(self, model, runner: BlockRunner, targets, crit, decide, feed: str):
        self.model, self.runner, self.crit, self.decide, self.feed = model, runner, crit, decide, feed
        self.by_key = {t.key: t for t in targets}
        self.layers = {t.key: (t.key, t.module, t.param) for t in targets}
        stages = runner.layout({t.key: t.module for t in targets})
        self.keys = {s: [t.key for t in targets if stages.get(t.key) == s]
                     for s in [PREFIX, SUFFIX, *range(len(runner))]}
        self.unseen = [t.key for t in targets if t.key not in stages]

    def run(self) -> None:
        r, dense = self.runner, self.feed == "dense"
        check_seen({}, self.unseen)  # layers the forward never calls: nothing can calibrate them
        last = len(r) - 1 if self.keys[SUFFIX] else max([k for k in range(len(r)) if self.keys[k]], default=-1)
        pending: List[Tuple[object, tuple]] = []  # dense: the prefix's decisions, applied once nothing reads it
        if dense:
            pending = self._calibrate(self.keys[PREFIX], r.capture)
        else:
            self._sequential(self.keys[PREFIX], lambda first=False: r.run_prefix(first=first))
            r.capture()
        for k in range(last + 1):
            if dense:
                out = {}
                self._apply(self._calibrate(self.keys[k], lambda: out.setdefault("y", r.run_block(k, keep=True))))
                out = out["y"]
            else:
                self._sequential(self.keys[k], lambda first=False: r.run_block(k, first=first))
                out = r.run_block(k, keep=True)
            r.advance(out)
        if self.keys[SUFFIX]:
            if dense:
                self._apply(self._calibrate(self.keys[SUFFIX], r.run_suffix))
            else:
                self._sequential(self.keys[SUFFIX], lambda first=False: r.run_suffix(first=first))
        self._apply(pending)

    def _calibrate(self, keys: List[str], stage_pass: Callable[[], object]) -> List[Tuple[object, tuple]]:
        """Calibrate ``keys`` on one pass of the stage; their decisions (not yet applied)."""
        if not keys:
            stage_pass()
            return []
        self.crit.reset()
        with observe_inputs(self.model, [self.layers[k] for k in keys], self.crit.observe_input) as seen:
            stage_pass()
        check_seen(seen, keys)
        share_statistics(self.crit, len(self.runner.inputs))
        out = [(self.by_key[k], self.decide(self.by_key[k])) for k in keys]
        self.crit.reset()  # the statistics of this stage are not needed any more (SparseGPT: the Hessians)
        return out

    def _sequential(self, keys: List[str], stage_pass: Callable[..., object]) -> None:
        """Calibrate and prune ``keys`` group by group, each group on the stage with the earlier ones pruned."""
        if not keys:
            return
        for group in _groups(self.model, [self.layers[k] for k in keys], lambda: stage_pass(first=True)):
            self._apply(self._calibrate(group, stage_pass))

    def _apply(self, decisions) -> None:
        for t, decision in decisions:
            _apply(t, decision)
        if decisions:
            attach_refresh_hooks(self.model)  # later layers' inputs come from these, also inside fused parents
