"""The one calibration loop: feeds a data-driven criterion the gradients or activations its ``needs`` declares.

Weight pruning and channel pruning (the packages above this one) both call
:func:`calibrate`. What it guarantees, whatever happens inside (an exception included):

* every module of the model (and of the traced graph) is in eval mode during calibration -- statistics of
  the deployed model, BatchNorm running statistics untouched -- and gets its own training flag back after;
* every parameter's ``.grad`` is what it was before (calibration's gradients never stay behind);
* a criterion that needs data but gets none raises :class:`~prunekit.importance.base.NeedsDataError` (a
  ConfigError and a PruningError) naming ``calibration=``; an empty iterable raises :class:`PruningError`.

A non-finite loss is not special-cased: its gradients reach :meth:`Criterion.observe` as they are.
"""
from __future__ import annotations

import itertools
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .._inputs import first_tensor, run_model, split_inputs
from ..errors import PruningError
from ..graph.layout import Layout
from .base import ACTIVATIONS, DATA_NEEDS, GRADIENTS, INPUTS, NeedsDataError
from .inputs import check_seen, observe_inputs, weight_layers

# what counts as an activation output for activation statistics (dropout and identity are not)
ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.ELU,
    nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Tanhshrink, nn.Softsign, nn.LogSigmoid,
)
ACTIVATION_FUNCS = {torch.relu, F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.leaky_relu, F.elu, torch.sigmoid, F.mish,
                    torch.tanh, F.tanh, F.hardsigmoid, F.selu, F.celu, F.softplus, F.hardtanh}
ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "tanh"}


def default_loss(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the model's primary output tensor (class logits) against integer targets."""
    return F.cross_entropy(first_tensor(outputs), targets)


def calibrate(criterion, model: nn.Module, batches: Optional[Iterable], *, loss_fn: Optional[Callable] = None,
              max_batches: Optional[int] = None, params: Optional[Iterable[Tuple[str, nn.Parameter]]] = None,
              graph=None, layers: Optional[Sequence[Tuple[str, nn.Module, str]]] = None) -> int:
    """Run calibration ``batches`` so ``criterion`` accumulates what its ``needs`` declares; returns the batch count.

    * ``needs`` without ``"gradients"`` / ``"activations"``: nothing runs (returns 0), ``batches`` may be None.
    * ``"gradients"``: per batch ``(inputs, targets)``, forward, ``loss_fn(primary output, targets)``
      (default: cross-entropy on class logits; the primary output is the tensor, the first of a tuple, or
      ``logits``), backward, then ``criterion.observe(params)``. ``params``: the (name, parameter) pairs to
      observe -- default every parameter of ``model`` that requires grad, named as in ``named_parameters()``.
    * ``"activations"``: per batch, the inputs run through ``graph`` (a :class:`prunekit.graph.groups.Graph`
      of ``model``) under no_grad, and every activation output whose channels the graph tracks goes to
      ``criterion.observe_activation(atoms, values, dim)``. Without ``graph``: :class:`PruningError`.
    * ``"inputs"``: per batch, a no_grad forward of ``model`` on the batch's inputs; every layer of ``layers``
      (``(weight key, module, param)`` triples; default every Linear / Conv1d / Conv2d weight) hands its input
      matrix to ``criterion.observe_input(key, X)`` (:mod:`prunekit.importance.inputs`). A batch is an
      ``(inputs, targets)`` pair or, since no loss is computed, the inputs alone (a tensor or a dict).

    ``criterion.reset()`` is called first; ``max_batches`` (None: all) bounds the batches read. A criterion
    needing both gets the same batches twice (they are read into a list once).
    """
    needs = criterion.needs & DATA_NEEDS
    if not needs:
        return 0
    name = getattr(criterion, "name", type(criterion).__name__)
    if batches is None:
        raise NeedsDataError(f"criterion {name!r} needs data ({' and '.join(sorted(needs))} of calibration batches): "
                             "pass calibration=[(inputs, targets), ...] (a DataLoader or a list of batches)")
    if ACTIVATIONS in needs and graph is None:
        raise PruningError(f"criterion {name!r} reads activation statistics, which need the model's traced graph "
                           "(graph=...); channel pruning (granularity='channel') supplies it")
    if max_batches is not None:
        batches = itertools.islice(batches, max(0, int(max_batches)))
    if len(needs) > 1:
        batches = list(batches)
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad] if params is None else list(params)
    criterion.reset()
    gm = getattr(getattr(graph, "captured", None), "gm", None)
    modules = _modules(model, gm)
    was, flags = model.training, [(m, m.training) for m in modules]
    grads = _grads(modules, params)
    seen = 0
    try:
        for root in (model, gm):
            if isinstance(root, nn.Module):
                root.eval()
        if GRADIENTS in needs:
            seen = _gradients(criterion, model, batches, loss_fn or default_loss, params, grads)
        if ACTIVATIONS in needs:
            seen = max(seen, _activations(criterion, graph, batches))
        if INPUTS in needs:
            seen = max(seen, _inputs(criterion, model, batches, weight_layers(model) if layers is None else layers))
    finally:
        model.train(was)  # the model's own train() first, as before (an override of it runs)
        for m, flag in flags:
            m.training = flag  # then each module's flag exactly as it was (mixed train / eval submodules)
        for p, g in grads:
            p.grad = g
    if seen == 0:
        raise PruningError("the calibration iterable yielded no batches")
    return seen


def _modules(model: nn.Module, gm) -> List[nn.Module]:
    """Every module of ``model`` and of the traced GraphModule ``gm`` (its copies, for a non-fx capture), once each."""
    out: Dict[int, nn.Module] = {id(m): m for m in model.modules()}
    if isinstance(gm, nn.Module):
        out.update((id(m), m) for m in gm.modules() if id(m) not in out)
    return list(out.values())


def _grads(modules: Sequence[nn.Module], params) -> List[Tuple[nn.Parameter, Optional[torch.Tensor]]]:
    """(parameter, its current .grad) for every parameter of ``modules`` and ``params``, once each."""
    seen: Dict[int, Tuple[nn.Parameter, Optional[torch.Tensor]]] = {}
    for m in modules:
        for p in m.parameters(recurse=False):
            seen.setdefault(id(p), (p, p.grad))
    for _, p in params:
        seen.setdefault(id(p), (p, p.grad))
    return list(seen.values())


def _pair(batch, i: int):
    try:
        return batch[i]
    except (TypeError, IndexError, KeyError):
        raise PruningError(f"calibration batches must be (inputs, targets) pairs, got {type(batch).__name__}") from None


def _gradients(criterion, model: nn.Module, batches, loss_fn: Callable, params, grads) -> int:
    seen = 0
    with torch.enable_grad():
        for batch in batches:
            inputs, targets = _pair(batch, 0), _pair(batch, 1)
            for p, _ in grads:
                p.grad = None
            loss = loss_fn(first_tensor(run_model(model, inputs)), targets)
            loss.backward()
            criterion.observe(params)
            seen += 1
    return seen


class _Watcher(fx.Interpreter):
    """Runs the traced graph and hands activation outputs (with their channel atoms) to the criterion."""

    def __init__(self, gm, watch, criterion):
        super().__init__(gm)
        self.watch, self.criterion = watch, criterion

    def run_node(self, n):
        out = super().run_node(n)
        if n in self.watch and isinstance(out, torch.Tensor):
            dim, atoms = self.watch[n]
            self.criterion.observe_activation(atoms, out, dim)
        return out


def is_activation(gm: fx.GraphModule, node: fx.Node) -> bool:
    """Whether ``node`` computes an element-wise activation (module, function or tensor method)."""
    if node.op == "call_module":
        return isinstance(gm.get_submodule(node.target), ACTIVATION_MODULES)
    if node.op == "call_function":
        return node.target in ACTIVATION_FUNCS
    return node.op == "call_method" and node.target in ACTIVATION_METHODS


def activation_watch(graph) -> Dict[fx.Node, Tuple[int, np.ndarray]]:
    """Activation node -> (its channel dim, the channel atom of each index along it), for tracked layouts."""
    gm, values = graph.captured.gm, graph.values
    watch = {}
    for node in gm.graph.nodes:
        lay = values.get(node)
        if is_activation(gm, node) and isinstance(lay, Layout) and lay.tracked():
            d = lay.tracked()[0]
            watch[node] = (d, graph.ids.roots(lay.dims[d]))
    return watch


def _activations(criterion, graph, batches) -> int:
    gm, watch = graph.captured.gm, activation_watch(graph)
    seen = 0
    with torch.no_grad():
        for batch in batches:
            args, kwargs = split_inputs(_pair(batch, 0))
            if kwargs:
                args = tuple(args) + tuple(kwargs.values())
            _Watcher(gm, watch, criterion).run(*args)
            seen += 1
    return seen


def _batch_inputs(batch):
    """The model inputs of a calibration batch: the first of an ``(inputs, targets)`` pair, or the batch itself."""
    if isinstance(batch, (torch.Tensor, dict)):
        return batch
    return _pair(batch, 0)


def _inputs(criterion, model: nn.Module, batches, layers) -> int:
    layers = list(layers)
    seen = 0
    with observe_inputs(model, layers, criterion.observe_input) as calls, torch.no_grad():
        for batch in batches:
            run_model(model, _batch_inputs(batch))
            seen += 1
    if seen:
        check_seen(calls, [key for key, _, _ in layers])
    return seen
