"""Fallback capture with torch.export (non-strict): aten layer ops on a module's weights become module calls again."""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Callable, Dict, Optional, Tuple

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
    aten.addmm.default: ((), 2, 1),  # () : Hugging Face's Conv1D (is_transposed_linear), addmm(bias, x, weight)
}


def is_transposed_linear(module: Any) -> bool:
    """Hugging Face's ``Conv1D`` (GPT-2, GPT, ...): a Linear with a ``(in, out)`` weight, ``addmm(b, x, W)``.

    Recognised by its shape, without importing ``transformers``: class named ``Conv1D`` with ``nf`` output
    features, a 2-D ``(nx, nf)`` weight and an ``nf`` bias.
    """
    if type(module).__name__ != "Conv1D" or not isinstance(module, nn.Module):
        return False
    w, b, nf = getattr(module, "weight", None), getattr(module, "bias", None), getattr(module, "nf", None)
    return (isinstance(w, torch.Tensor) and w.dim() == 2 and isinstance(nf, int) and w.shape[1] == nf
            and (b is None or (isinstance(b, torch.Tensor) and tuple(b.shape) == (nf,))))


def tensor_leaves(out: Any) -> list:
    """The tensors of a model's output, in order: through tuples, lists, dicts (Hugging Face ``ModelOutput`` is
    one) and dataclasses; anything else (a key-value cache object, None, numbers) is left out."""
    if isinstance(out, torch.Tensor):
        return [out]
    if isinstance(out, (tuple, list)):
        return [t for item in out for t in tensor_leaves(item)]
    if isinstance(out, dict):
        return [t for item in out.values() for t in tensor_leaves(item)]
    if dataclasses.is_dataclass(out) and not isinstance(out, type):
        return [t for f in dataclasses.fields(out) for t in tensor_leaves(getattr(out, f.name))]
    return []


def output_tensors(out: Any) -> list:
    """The output tensors whose shapes pruning keeps: :func:`tensor_leaves`, except that of an output with
    ``logits`` (a Hugging Face model with a head) only the logits count; hidden states returned beside them
    (T5's encoder_last_hidden_state) may change width with the model."""
    if isinstance(out, dict) and isinstance(out.get("logits"), torch.Tensor):
        return [out["logits"]]
    return tensor_leaves(out)


class _TensorOutputs(nn.Module):
    """Runs the model and returns only its output tensors (a flat tuple), which torch.export can always describe."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.inner = model

    def forward(self, *args, **kwargs):
        return tuple(output_tensors(self.inner(*args, **kwargs)))


def export_graph(model: nn.Module, example_inputs: Inputs,
                 keep_whole: Optional[Callable[[nn.Module], bool]] = None) -> fx.GraphModule:
    """torch.export (non-strict) the model and rebuild a graph whose layer calls are ``call_module`` nodes.

    The graph returns the model's output tensors as one flat tuple (outputs that are not tensors, such as a
    Hugging Face model's key-value cache, are dropped; of an output with ``logits``, only the logits): only the
    tensors matter for the dependency analysis.
    ``keep_whole(module)``: modules (outside torch.nn) whose ops are folded back into one ``call_module`` node
    (a layer that has its own channel rule, such as an RMSNorm class), where its ops take one tensor from
    outside and give one back.
    """
    args, kwargs = split_inputs(example_inputs)
    ep = torch.export.export(_TensorOutputs(model), tuple(args), kwargs=kwargs, strict=False)
    fqn: Dict[str, str] = {}  # placeholder -> the model's own name of what it lifts
    lifted: Dict[str, str] = {}  # placeholder -> the exported program's name (its constants are keyed by it)
    for spec in ep.graph_signature.input_specs:
        if spec.target is not None:
            lifted[spec.arg.name] = spec.target
            fqn[spec.arg.name] = spec.target[len("inner."):] if spec.target.startswith("inner.") else spec.target
    owners = {name: mod for name, mod in model.named_modules()}
    root: Dict[str, Any] = dict(owners)
    # every name of a tied tensor (GPT-2's lm_head.weight is transformer.wte.weight): torch.export may lift it
    # under either, and named_parameters() keeps only the first
    root.update(dict(model.named_parameters(remove_duplicate=False)))
    root.update(dict(model.named_buffers(remove_duplicate=False)))
    aliases: Dict[str, list] = {}
    by_id: Dict[int, list] = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        by_id.setdefault(id(t), []).append(name)
    for names in by_id.values():
        for name in names:
            aliases[name] = names
    graph, env = fx.Graph(), {}
    for node in ep.graph.nodes:
        if node.op == "placeholder":
            env[node] = _placeholder(graph, node, fqn, lifted, root, ep)
        elif node.op == "output":
            graph.output(fx.node.map_arg(node.args[0], lambda n: env[n]))
        elif node.op == "call_function":
            env[node] = _call(graph, node, env, fqn, owners, aliases)
        else:
            env[node] = graph.node_copy(node, lambda n: env[n])
        if node in env and isinstance(env[node], fx.Node):
            env[node].meta.update({k: v for k, v in node.meta.items() if k in ("stack_trace", "val")})
            if node.meta.get("nn_module_stack"):  # paths inside the model, not inside the output wrapper
                env[node].meta["nn_module_stack"] = _unwrapped_stack(node.meta["nn_module_stack"])
    if keep_whole is not None:
        for name, module in owners.items():
            if name and not type(module).__module__.startswith("torch.") and keep_whole(module):
                _fold_module(graph, name)
    for node in list(graph.nodes):  # a weight whose op became a module call is read by nothing now
        if node.op == "get_attr" and not node.users:
            graph.erase_node(node)
    return fx.GraphModule(root, graph, type(model).__name__)


_ALIASES = {op for op in (getattr(aten.to, "dtype", None), getattr(aten.to, "dtype_layout", None), aten.alias.default,
                          aten.contiguous.default, aten.detach.default) if op is not None}


def _same_value_type(a: fx.Node, b: fx.Node) -> bool:
    va, vb = a.meta.get("val"), b.meta.get("val")
    return (isinstance(va, torch.Tensor) and isinstance(vb, torch.Tensor) and va.dtype == vb.dtype
            and tuple(va.shape) == tuple(vb.shape))


def _unwrapped_stack(stack: Dict[str, Any]) -> Dict[str, Any]:
    """``nn_module_stack`` with the ``_TensorOutputs`` wrapper's ``inner.`` prefix removed (the model is root)."""
    out = {}
    for key, value in stack.items():
        path = str(value[0]) if isinstance(value, tuple) else str(value)
        if path == "inner":
            path = ""
        elif path.startswith("inner."):
            path = path[len("inner."):]
        out[key] = (path,) + tuple(value[1:]) if isinstance(value, tuple) else path
    return out


def _owner(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    last = list(stack.values())[-1]
    return str(last[0] if isinstance(last, tuple) else last)


def _fold_module(graph: fx.Graph, name: str) -> bool:
    """Replace the ops that ran inside module ``name`` by one ``call_module`` node, when they read exactly one
    tensor from outside (besides the module's own parameters) and exactly one of them is read outside."""
    inside = [n for n in graph.nodes if n.op in ("call_function", "call_module")
              and (_owner(n) == name or _owner(n).startswith(name + "."))]
    if not inside:
        return False
    members = set(inside)
    own = name + "."
    for n in inside:  # `x.to(float32)` of a float32 x is x itself: the caller's later uses of it read x
        src = n.all_input_nodes[0] if len(n.all_input_nodes) == 1 else None
        if n.target in _ALIASES and src is not None and src not in members and _same_value_type(n, src):
            for user in [u for u in n.users if u not in members]:
                user.replace_input_with(n, src)
    inputs: list = []
    for n in inside:
        for a in n.all_input_nodes:
            if a in members or (a.op == "get_attr" and str(a.target).startswith(own)) or a in inputs:
                continue
            inputs.append(a)
    outputs = [n for n in inside if any(u not in members for u in n.users)]
    if len(inputs) != 1 or len(outputs) != 1:
        return False
    with graph.inserting_after(outputs[0]):
        call = graph.call_module(name, (inputs[0],))
    call.meta.update(outputs[0].meta)
    outputs[0].replace_all_uses_with(call, delete_user_cb=lambda u: u is not call)
    for n in reversed(inside):
        graph.erase_node(n)
    return True


def _placeholder(graph: fx.Graph, node: fx.Node, fqn: Dict[str, str], lifted: Dict[str, str], root: Dict[str, Any],
                 ep) -> fx.Node:
    if node.name not in fqn:
        return graph.placeholder(node.name)
    target = fqn[node.name]
    if target not in root:  # a lifted constant tensor: keep it reachable under a private name
        const = ep.constants.get(lifted[node.name])
        target = f"_prunekit_const_{len(root)}"
        root[target] = const
    return graph.get_attr(target)


def _call(graph: fx.Graph, node: fx.Node, env, fqn: Dict[str, str], owners: Dict[str, nn.Module],
          aliases: Dict[str, list]) -> fx.Node:
    spec = MODULE_OPS.get(node.target)
    if spec is not None:
        types, w_idx, x_idx = spec
        weight = node.args[w_idx] if len(node.args) > w_idx else None
        name = fqn.get(getattr(weight, "name", ""), "")
        for alias in aliases.get(name, [name]):  # a tied weight: the module of the matching type owns this call
            module_name = alias.rpartition(".")[0]
            owner = owners.get(module_name)
            if alias.endswith("weight") and (_is_plain(owner, types) if types else is_transposed_linear(owner)):
                return graph.call_module(module_name, (env[node.args[x_idx]],))
    return graph.node_copy(node, lambda n: env[n])


def _is_plain(module: Any, types: tuple) -> bool:
    """``module`` is one of ``types`` running that type's own forward: calling it computes exactly the aten op.

    A subclass with its own forward (Hugging Face's ConvNextLayerNorm permutes around ``F.layer_norm`` inside
    it) is not: mapping the op back onto a call of it would apply its extra steps twice.
    """
    if not isinstance(module, types):
        return False
    return any(isinstance(module, t) and type(module).forward is t.forward for t in types)
