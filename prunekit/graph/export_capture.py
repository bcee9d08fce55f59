"""Fallback capture with torch.export (non-strict): aten layer ops on a module's weights become module calls again."""
from __future__ import annotations

import logging
from typing import Any, Dict, Tuple

import torch
import torch.fx as fx
from torch import nn

from .._inputs import Inputs, split_inputs

log = logging.getLogger(__name__)
aten = torch.ops.aten

# aten op -> (layer types it stands for, index of the weight argument, index of the input argument)
MODULE_OPS: Dict[Any, Tuple[tuple, int, int]] = {
    aten.conv1d.default: ((nn.Conv1d,), 1, 0),
    aten.conv2d.default: ((nn.Conv2d,), 1, 0),
    aten.conv3d.default: ((nn.Conv3d,), 1, 0),
    aten.conv_transpose1d.default: ((nn.ConvTranspose1d,), 1, 0),
    aten.conv_transpose2d.input: ((nn.ConvTranspose2d,), 1, 0),
    aten.linear.default: ((nn.Linear,), 1, 0),
    aten.batch_norm.default: ((nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d), 1, 0),
    aten.instance_norm.default: ((nn.InstanceNorm1d, nn.InstanceNorm2d, nn.InstanceNorm3d), 1, 0),
    aten.layer_norm.default: ((nn.LayerNorm,), 2, 0),
    aten.group_norm.default: ((nn.GroupNorm,), 2, 0),
    aten.embedding.default: ((nn.Embedding,), 0, 1),
    aten.prelu.default: ((nn.PReLU,), 1, 0),
}


def export_graph(model: nn.Module, example_inputs: Inputs) -> fx.GraphModule:
    """torch.export (non-strict) the model and rebuild a graph whose layer calls are ``call_module`` nodes."""
    args, kwargs = split_inputs(example_inputs)
    ep = torch.export.export(model, tuple(args), kwargs=kwargs, strict=False)
    fqn: Dict[str, str] = {}
    for spec in ep.graph_signature.input_specs:
        if spec.target is not None:
            fqn[spec.arg.name] = spec.target
    owners = {name: mod for name, mod in model.named_modules()}
    root: Dict[str, Any] = dict(owners)
    root.update(dict(model.named_parameters()))
    root.update(dict(model.named_buffers()))
    graph, env = fx.Graph(), {}
    for node in ep.graph.nodes:
        if node.op == "placeholder":
            env[node] = _placeholder(graph, node, fqn, root, ep)
        elif node.op == "output":
            graph.output(fx.node.map_arg(node.args[0], lambda n: env[n]))
        elif node.op == "call_function":
            env[node] = _call(graph, node, env, fqn, owners)
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
        if node in env and isinstance(env[node], fx.Node):
            env[node].meta.update({k: v for k, v in node.meta.items() if k in ("nn_module_stack", "stack_trace")})
    return fx.GraphModule(root, graph, type(model).__name__)


def _placeholder(graph: fx.Graph, node: fx.Node, fqn: Dict[str, str], root: Dict[str, Any], ep) -> fx.Node:
    if node.name not in fqn:
        return graph.placeholder(node.name)
    target = fqn[node.name]
    if target not in root:  # a lifted constant tensor: keep it reachable under a private name
        const = ep.constants.get(target)
        target = f"_prunekit_const_{len(root)}"
        root[target] = const
    return graph.get_attr(target)


def _call(graph: fx.Graph, node: fx.Node, env, fqn: Dict[str, str], owners: Dict[str, nn.Module]) -> fx.Node:
    spec = MODULE_OPS.get(node.target)
    if spec is not None:
        types, w_idx, x_idx = spec
        weight = node.args[w_idx] if len(node.args) > w_idx else None
        name = fqn.get(getattr(weight, "name", ""), "")
        module_name = name.rpartition(".")[0]
        if name.endswith("weight") and isinstance(owners.get(module_name), types):
            return graph.call_module(module_name, (env[node.args[x_idx]],))
    return graph.node_copy(node, lambda n: env[n])
