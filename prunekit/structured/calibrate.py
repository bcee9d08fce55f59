"""Feed calibration batches to data-driven criteria: gradients (Taylor) or activations (mean activation, APoZ)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

import torch
import torch.fx as fx
import torch.nn.functional as F
from torch import nn

from .._inputs import first_tensor, run_model, split_inputs
from ..errors import PruningError
from ..graph.layout import Layout

ACTIVATION_FUNCS = {torch.relu, F.relu, F.relu6, F.gelu, F.silu, F.hardswish, F.leaky_relu, F.elu, torch.sigmoid, F.mish}
ACTIVATION_METHODS = {"relu", "relu_", "sigmoid", "tanh"}


def default_loss(outputs: Any, targets: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(first_tensor(outputs), targets)


def calibrate(criterion, model: nn.Module, graph, calibration: Optional[Iterable], loss_fn: Optional[Callable]) -> None:
    """Run the calibration batches so ``criterion`` can accumulate what it needs (no-op for data-free criteria)."""
    if not getattr(criterion, "needs_data", False):
        return
    if calibration is None:
        raise PruningError(
            f"criterion {getattr(criterion, 'name', criterion)!r} needs data: pass calibration=[(inputs, targets), ...]"
        )
    criterion.reset()
    was = model.training
    model.eval()  # statistics of the deployed model; BatchNorm running stats stay untouched
    try:
        if getattr(criterion, "needs_activations", False):
            _activations(criterion, graph, calibration)
        else:
            _gradients(criterion, model, calibration, loss_fn or default_loss)
    finally:
        model.train(was)


def _gradients(criterion, model, calibration, loss_fn) -> None:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for batch in calibration:
        inputs, targets = batch[0], batch[1]
        for _, p in params:
            p.grad = None
        loss = loss_fn(run_model(model, inputs), targets)
        loss.backward()
        criterion.observe(params)
    for _, p in params:
        p.grad = None


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


def _activations(criterion, graph, calibration) -> None:
    from .handlers.passthrough import ACTIVATIONS

    gm, values = graph.captured.gm, graph.values
    watch = {}
    for node in gm.graph.nodes:
        is_act = (
            (node.op == "call_module" and isinstance(gm.get_submodule(node.target), ACTIVATIONS)
             and not isinstance(gm.get_submodule(node.target), (nn.Identity, nn.Dropout)))
            or (node.op == "call_function" and node.target in ACTIVATION_FUNCS)
            or (node.op == "call_method" and node.target in ACTIVATION_METHODS)
        )
        lay = values.get(node)
        if is_act and isinstance(lay, Layout) and lay.tracked():
            d = lay.tracked()[0]
            watch[node] = (d, graph.ids.roots(lay.dims[d]))
    with torch.no_grad():
        for batch in calibration:
            args, kwargs = split_inputs(batch[0])
            if kwargs:
                args = tuple(args) + tuple(kwargs.values())
            _Watcher(gm, watch, criterion).run(*args)
