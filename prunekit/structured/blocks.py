"""Depth pruning: find residual blocks whose skip path is the identity and replace the lowest-ranked ones by nn.Identity."""
from __future__ import annotations

import operator
from dataclasses import dataclass
from typing import Dict, List, Set

import torch
import torch.fx as fx
from torch import nn

from .._inputs import Inputs, run_model
from ..errors import PruningError

ADDS = {operator.add, torch.add, operator.iadd, "add", "add_"}
IDEMPOTENT = (nn.ReLU, nn.ReLU6, nn.Identity)  # f(f(x)) == f(x): relu(x + 0) == x when x came out of a relu


@dataclass
class Block:
    name: str
    input: fx.Node
    output: fx.Node


def find_blocks(gm: fx.GraphModule) -> List[Block]:
    """Submodules whose graph is ``out = x + f(x)`` (optionally followed by ReLU), ``x`` being the block's input."""
    members: Dict[str, List[fx.Node]] = {}
    for node in gm.graph.nodes:
        for path in _paths(node):
            members.setdefault(path, []).append(node)
    blocks = []
    for name, nodes in members.items():
        inside = set(nodes)
        inputs = {a for n in nodes for a in n.all_input_nodes if a not in inside and a.op != "get_attr"}
        outputs = [n for n in nodes if any(u not in inside for u in n.users)]
        if len(inputs) != 1 or len(outputs) != 1:
            continue
        x = next(iter(inputs))
        if _is_identity_residual(gm, outputs[0], x, inside):
            blocks.append(Block(name, x, outputs[0]))
    names = {b.name for b in blocks}
    return [b for b in blocks if not any(b.name.startswith(o + ".") for o in names)]  # outermost only


def _paths(node: fx.Node) -> List[str]:
    stack = node.meta.get("nn_module_stack") or {}
    paths = [v[0] if isinstance(v, tuple) else str(v) for v in stack.values()]
    if node.op == "call_module":
        paths = [p for p in paths if p != node.target]
    return [p for p in paths if p]


def _is_identity_residual(gm, out: fx.Node, x: fx.Node, inside: Set[fx.Node]) -> bool:
    node = out
    if node.op == "call_module" and isinstance(gm.get_submodule(node.target), IDEMPOTENT) and not _is_identity(gm, node):
        if not _nonnegative(gm, x):
            return False
        node = node.args[0]
    elif node.op in ("call_function", "call_method") and node.target in (torch.relu, "relu"):
        if not _nonnegative(gm, x):
            return False
        node = node.args[0]
    if not isinstance(node, fx.Node) or node.target not in ADDS or len(node.args) < 2:
        return False
    a, b = (_see_through(gm, arg) for arg in node.args[:2])
    return (a is x and isinstance(b, fx.Node) and b in inside) or (b is x and isinstance(a, fx.Node) and a in inside)


def _is_identity(gm, node) -> bool:
    return node.op == "call_module" and isinstance(gm.get_submodule(node.target), nn.Identity)


def _see_through(gm, node):
    while isinstance(node, fx.Node) and _is_identity(gm, node):
        node = node.args[0]
    return node


NONNEG_KEEPERS = (nn.MaxPool1d, nn.MaxPool2d, nn.MaxPool3d, nn.AvgPool1d, nn.AvgPool2d, nn.AvgPool3d,
                  nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Dropout, nn.Identity)


def _nonnegative(gm, x: fx.Node) -> bool:
    """The block input came out of a ReLU, possibly through pooling (so a ReLU after the skip-add is the identity)."""
    while isinstance(x, fx.Node):
        if x.op == "call_module":
            mod = gm.get_submodule(x.target)
            if isinstance(mod, (nn.ReLU, nn.ReLU6)):
                return True
            if not isinstance(mod, NONNEG_KEEPERS):
                return False
        elif x.op in ("call_function", "call_method") and x.target in (torch.relu, "relu"):
            return True
        else:
            return False
        x = x.args[0] if x.args else None
    return False


def block_scores(model: nn.Module, blocks: List[Block], batches: List[Inputs]) -> Dict[str, float]:
    """||f(x)|| / ||x|| of every block's residual branch on the given inputs (low = the block changes little).
    ``blocks``: :class:`Block` entries or module names; a block of a layer stack reads its hidden states as the
    first positional argument or ``hidden_states=``, and its output as the first element of a tuple output."""
    names = [b if isinstance(b, str) else b.name for b in blocks]
    sums: Dict[str, float] = {n: 0.0 for n in names}
    handles = []

    def hook(name):
        def fn(module, args, kwargs, output):
            x = args[0] if args else kwargs.get("hidden_states")
            y = output[0] if isinstance(output, (tuple, list)) else output
            if not isinstance(x, torch.Tensor) or not isinstance(y, torch.Tensor) or x.shape != y.shape:
                raise PruningError(f"block {name!r}: its output ({_shape(y)}) is not its input's shape ({_shape(x)}), "
                                   "so removing it cannot leave the model running; exclude it")
            sums[name] += float((y.float() - x.float()).norm() / (x.float().norm() + 1e-12))

        return fn

    for n in names:
        handles.append(model.get_submodule(n).register_forward_hook(hook(n), with_kwargs=True))
    was = model.training
    model.eval()
    try:
        with torch.no_grad():
            for inputs in batches:
                run_model(model, inputs)
    finally:
        model.train(was)
        for h in handles:
            h.remove()
    return sums


def _shape(t) -> str:
    return f"shape {tuple(t.shape)}" if isinstance(t, torch.Tensor) else type(t).__name__


def replace_blocks(model: nn.Module, names: List[str]) -> None:
    """Remove the blocks ``names``: a layer of a layer stack (:mod:`prunekit.structured.layers`) leaves its list,
    any other block is replaced by ``nn.Identity``."""
    from .layers import find_layer_stacks, remove_layers

    stacks = {s.name: s for s in find_layer_stacks(model)}
    by_stack: Dict[str, List[int]] = {}
    rest = []
    for name in names:
        parent, _, child = name.rpartition(".")
        if parent in stacks and child.isdigit():
            if int(child) in stacks[parent].kept:
                raise PruningError(f"layer {name!r} cannot be removed: {stacks[parent].kept[int(child)]}")
            by_stack.setdefault(parent, []).append(int(child))
        else:
            rest.append(name)
    for parent, indices in by_stack.items():
        remove_layers(model, stacks[parent], indices)
    for name in rest:
        parent_name, _, child = name.rpartition(".")
        parent = model.get_submodule(parent_name) if parent_name else model
        setattr(parent, child, nn.Identity())
