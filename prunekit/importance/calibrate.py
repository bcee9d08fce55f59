"""The one calibration loop: feeds a data-driven criterion the gradients or activations its ``needs`` declares.

Weight pruning and channel pruning (the packages above this one) both call
:func:`calibrate`. What it guarantees, whatever happens inside (an exception included):

* every module of the model (and of the traced graph) is in eval mode during calibration -- statistics of
  the deployed model, BatchNorm running statistics untouched -- and gets its own training flag back after;
* every parameter's ``.grad`` is what it was before (calibration's gradients never stay behind);
* a criterion that needs data but gets none raises :class:`~prunekit.importance.base.NeedsDataError` (a
  ConfigError and a PruningError) naming ``calibration=``; an empty iterable raises :class:`PruningError`.

A non-finite loss is not special-cased: its gradients reach :meth:`Criterion.observe` as they are.

Under torchrun (a process group of more than one process) each process feeds its own calibration batches, then
:func:`share_statistics` sums the criterion's statistics over every process (:meth:`Criterion.all_reduce`: sums
and counts, never per-process means), so every rank scores with the whole calibration set -- the union of the
shards, as one process over all of them would (up to the order of floating-point additions) -- and every rank
prunes the same channels / weights, given the same model. In one process nothing of this runs.
"""
from __future__ import annotations

import itertools
import logging
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .. import collective
from .._inputs import first_tensor, run_model, split_inputs
from ..errors import PruningError
from ..graph.layout import Layout
from .base import ACTIVATIONS, DATA_NEEDS, GRADIENTS, INPUTS, Criterion, NeedsDataError
from .inputs import check_seen, observe_inputs, weight_layers

log = logging.getLogger(__name__)

# what counts as an activation output for activation statistics (dropout and identity are not)
ACTIVATION_MODULES = (
    nn.ReLU, nn.ReLU6, nn.LeakyReLU, nn.GELU, nn.SiLU, nn.Sigmoid, nn.Tanh, nn.Hardswish, nn.Hardsigmoid, nn.ELU,
    nn.SELU, nn.CELU, nn.Mish, nn.Softplus, nn.Hardtanh, nn.Tanhshrink, nn.Softsign, nn.LogSigmoid,
)
ACTIVATION_FUNCS = {torch.relu, F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.leaky_relu, F.elu, torch.sigmoid, F.mish,
                    torch.tanh, F.tanh, F.hardsigmoid, F.selu, F.celu, F.softplus, F.hardtanh}
ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "tanh"}
# the same activations as aten ops (torch.export captures: Hugging Face models, every nn activation module)
_aten = torch.ops.aten
ACTIVATION_ATEN = {getattr(_aten, n) for n in (
    "relu", "relu_", "relu6", "gelu", "gelu_", "silu", "silu_", "sigmoid", "sigmoid_", "tanh", "tanh_", "hardswish",
    "hardswish_", "hardsigmoid", "hardsigmoid_", "leaky_relu", "leaky_relu_", "elu", "elu_", "selu", "selu_", "celu",
    "celu_", "mish", "mish_", "softplus", "hardtanh", "hardtanh_") if hasattr(_aten, n)}


def default_loss(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of the model's primary output tensor (class logits) against integer targets."""
    return F.cross_entropy(first_tensor(outputs), targets)



def checked_needs(criterion, batches, graph, *, refuse_gradients: bool = False) -> frozenset:
    """The data ``criterion`` reads (empty: none, nothing to calibrate), after checking it can be read: batches
    given, a traced graph for activation statistics, and (``refuse_gradients``) no gradients."""
    needs = criterion.needs & DATA_NEEDS
    if not needs:
        return needs
    name = getattr(criterion, "name", type(criterion).__name__)
    if refuse_gradients and GRADIENTS in needs:
        raise PruningError(f"criterion {name!r} reads gradients of the loss, whose backward runs through the whole "
                           "model: block-by-block calibration serves criteria that read layer inputs or "
                           "activations (wanda, sparsegpt, activation, apoz); calibrate it whole (blocks=None)")
    if batches is None:
        raise NeedsDataError(f"criterion {name!r} needs data ({' and '.join(sorted(needs))} of calibration batches): "
                             "pass calibration=[(inputs, targets), ...] (a DataLoader or a list of batches)")
    if ACTIVATIONS in needs and graph is None:
        raise PruningError(f"criterion {name!r} reads activation statistics, which need the model's traced graph "
                           "(graph=...); channel pruning (granularity='channel') supplies it")
    return needs

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

    Under torchrun every process calls this with its own shard of the batches (``max_batches`` bounds each
    process's); the statistics are then summed over the processes (:func:`share_statistics`) and the returned
    count is that of every process's batches together. Each process needs at least one batch; an error on one
    process makes every process raise (none waits forever for the others).
    """
    needs = checked_needs(criterion, batches, graph)
    if not needs:
        return 0
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
            seen = max(seen, _activations(criterion, model, graph, batches))
        if INPUTS in needs:
            seen = max(seen, _inputs(criterion, model, batches, weight_layers(model) if layers is None else layers))
    except BaseException:
        failed_here()
        raise
    finally:
        model.train(was)  # the model's own train() first, as before (an override of it runs)
        for m, flag in flags:
            m.training = flag  # then each module's flag exactly as it was (mixed train / eval submodules)
        for p, g in grads:
            p.grad = g
    seen = share_statistics(criterion, seen)
    if seen == 0:
        raise PruningError("the calibration iterable yielded no batches")
    return seen


def share_statistics(criterion, seen: int) -> int:
    """Sum ``criterion``'s statistics over the processes of a torchrun job; returns the batch count of all of them.

    A no-op returning ``seen`` in one process. Under torchrun every process must call it after feeding its
    batches (:func:`calibrate` does; so must a loop of its own that feeds a criterion): first the processes
    agree that none failed, then ``criterion.all_reduce(prunekit.collective.all_reduce_sums)`` makes its
    statistics those of the union of the shards. A criterion without ``all_reduce`` keeps its own process's
    statistics (logged as a warning when it scores weights or channels).
    """
    if not collective.active():
        return seen
    if not collective.agree(True):
        raise PruningError(f"calibration failed on another process of the torchrun job (this is rank "
                           f"{collective.rank()}); its own error is in that process's output")
    counts = collective.all_reduce_sums({"batches": torch.tensor(seen, dtype=torch.int64),
                                         "empty": torch.tensor(int(seen == 0), dtype=torch.int64)})
    if int(counts["empty"]):
        raise PruningError(f"{int(counts['empty'])} of {collective.world_size()} processes got no calibration "
                           f"batches (this one, rank {collective.rank()}, got {seen}); give every process at least "
                           "one batch (e.g. shard the batches with rank r taking batches r, r + N, ...)")
    reduce = getattr(criterion, "all_reduce", None)
    if reduce is None or getattr(reduce, "__func__", None) is Criterion.all_reduce:
        if _scores(criterion):
            _warn_local(criterion)
    else:
        reduce(collective.all_reduce_sums)
    return int(counts["batches"])


def failed_here() -> None:
    """Tell the other processes that calibration failed here, so they raise instead of waiting for this one."""
    if collective.active():
        try:
            collective.agree(False)
        except Exception:  # the group itself broke (that may be the error being raised): nothing to tell
            pass


def _scores(criterion) -> bool:
    """Whether ``criterion`` scores weights or channels itself (not a helper that only watches the batches)."""
    cls = type(criterion)
    return any(getattr(cls, m, None) is not getattr(Criterion, m) for m in ("weight_scores", "group_scores"))


_WARNED: set = set()


def _warn_local(criterion) -> None:
    cls = type(criterion)
    if cls not in _WARNED:
        _WARNED.add(cls)
        log.warning("criterion %r (%s) has no all_reduce(sums): under torchrun each process scores with the "
                    "statistics of its own calibration batches, so the processes may prune differently; define "
                    "all_reduce (see prunekit.importance.base.Criterion.all_reduce)",
                    getattr(criterion, "name", cls.__name__), cls.__qualname__)


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
        return node.target in ACTIVATION_FUNCS or getattr(node.target, "overloadpacket", None) in ACTIVATION_ATEN
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


def _activations(criterion, model: nn.Module, graph, batches) -> int:
    """Feed ``criterion`` the watched activations of every batch.

    An fx graph runs as it is, at any input shape. A torch.export graph has the example's sizes spelled out in
    its reshapes, so it runs on batches of those shapes only: there, when every watched activation is the
    output of a module (an activation layer: nn.GELU, Hugging Face's GELUActivation, ...), the model itself
    runs, any shape, and hooks on those modules hand their outputs over; otherwise the graph runs and a batch
    of other shapes is a :class:`PruningError`.
    """
    gm, watch = graph.captured.gm, activation_watch(graph)
    if getattr(graph.captured, "exported", False):
        calls = module_calls(gm, watch)
        if calls is not None:
            return _activations_by_hooks(criterion, model, calls, batches)
    seen = 0
    with torch.no_grad():
        for batch in batches:
            args, kwargs = split_inputs(_pair(batch, 0))
            if kwargs:
                args = tuple(args) + tuple(kwargs.values())
            if getattr(graph.captured, "exported", False):
                _check_shapes(args, graph.captured.args, watch, gm)
            _Watcher(gm, watch, criterion).run(*args)
            seen += 1
    return seen


def _path(entry) -> str:
    """The module path of an ``nn_module_stack`` entry (``(path, type)``, or the path alone)."""
    return str(entry[0]) if isinstance(entry, tuple) else str(entry)


def module_calls(gm: fx.GraphModule, watch) -> Optional[Dict[str, List[Optional[Tuple[int, np.ndarray, int]]]]]:
    """Module path -> per call, in execution order: ``(dim, atoms, rank)`` of a watched activation, or None.

    For a torch.export graph: each watched activation node must be the only op of its innermost module (from the
    nodes' ``nn_module_stack``), so that module's output is that activation at every input shape. A module
    called more than once (a shared nn.ReLU) lists its calls in graph order, which is the order they run in.
    None when some watched activation is not such a module's output (the graph must run then).
    """
    scope: Dict[str, List[fx.Node]] = {}  # module path -> the nodes inside it (at any depth), graph order
    for node in gm.graph.nodes:
        for entry in (node.meta.get("nn_module_stack") or {}).values():
            path = _path(entry)
            if path:
                scope.setdefault(path, []).append(node)
    calls: Dict[str, List[Optional[Tuple[int, np.ndarray, int]]]] = {}
    for node, (dim, atoms) in watch.items():
        stack = list((node.meta.get("nn_module_stack") or {}).values())
        path = _path(stack[-1]) if stack else ""
        inside = scope.get(path, [])
        if not path or path in calls or not inside or not all(is_activation(gm, n) for n in inside):
            if path not in calls:
                return None
            continue
        rank = getattr(node.meta.get("val"), "ndim", None)
        calls[path] = [(watch[n][0], watch[n][1], rank) if n in watch else None for n in inside]
    return calls


def _activations_by_hooks(criterion, model: nn.Module, calls, batches) -> int:
    """Run ``model`` on every batch; forward hooks hand each watched activation module's output to ``criterion``."""
    count: Dict[str, int] = {}

    def hook(path):
        def fn(module, args, out):
            i = count.get(path, 0)
            count[path] = i + 1
            entries = calls[path]
            if i >= len(entries):
                raise PruningError(f"activation module {path!r} ran {i + 1} times in one forward, {len(entries)} "
                                   "in the traced graph: give calibration batches of the example inputs' shapes")
            if entries[i] is None:
                return
            dim, atoms, rank = entries[i]
            if not isinstance(out, torch.Tensor) or (rank is not None and out.dim() != rank):
                raise PruningError(f"activation module {path!r} returned {_describe(out)}, the traced graph a "
                                   f"{rank}-d tensor: give calibration batches of the example inputs' shapes")
            criterion.observe_activation(atoms, out, dim)
        return fn

    handles = [model.get_submodule(path).register_forward_hook(hook(path)) for path in calls]
    seen = 0
    try:
        with torch.no_grad():
            for batch in batches:
                count.clear()
                run_model(model, _pair(batch, 0))
                missing = [p for p, entries in calls.items() if count.get(p, 0) != len(entries)]
                if missing:
                    raise PruningError(f"activation module {missing[0]!r} ran {count.get(missing[0], 0)} times in a "
                                       f"forward, {len(calls[missing[0]])} in the traced graph: give calibration "
                                       "batches of the example inputs' shapes")
                seen += 1
    finally:
        for h in handles:
            h.remove()
    return seen


def _describe(out) -> str:
    return f"a {out.dim()}-d tensor" if isinstance(out, torch.Tensor) else type(out).__name__


def _check_shapes(args, example, watch, gm) -> None:
    """A torch.export graph runs at the example's shapes only: :class:`PruningError` for a batch of others."""
    got = [tuple(a.shape) for a in args if isinstance(a, torch.Tensor)]
    want = [tuple(a.shape) for a in example if isinstance(a, torch.Tensor)]
    if got != want:
        node = next((n for n in watch if module_calls(gm, {n: watch[n]}) is None), None)
        where = f" ({node.name} is not the output of an activation module)" if node is not None else ""
        raise PruningError(f"calibration batch of shapes {got}: this model was captured with torch.export, whose "
                           f"graph runs at the example inputs' shapes {want} only, and its activations{where} are "
                           "read from that graph; give calibration batches of those shapes")


def batch_inputs(batch):
    """The model inputs of a calibration batch: the first of an ``(inputs, targets)`` pair, or the batch itself."""
    if isinstance(batch, (torch.Tensor, dict)):
        return batch
    return _pair(batch, 0)


def _inputs(criterion, model: nn.Module, batches, layers) -> int:
    layers = list(layers)
    seen = 0
    with observe_inputs(model, layers, criterion.observe_input) as calls, torch.no_grad():
        for batch in batches:
            run_model(model, batch_inputs(batch))
            seen += 1
    if seen:
        check_seen(calls, [key for key, _, _ in layers])
    return seen
