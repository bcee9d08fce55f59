"""MACs budget: estimate a selection's MACs from per-layer counts, and search the ratio that meets a MACs target."""
from __future__ import annotations

import operator
from typing import Callable, Dict, Optional, Tuple

import numpy as np
import torch
import torch.fx
from torch import nn

from ..errors import PruningError


def layer_macs(graph) -> Tuple[int, Dict[str, int]]:
    """(total MACs, MACs per layer module) of one forward pass, from the traced shapes (see :func:`module_macs`)."""
    return module_macs(graph.captured, graph.prop.opaque)


def module_macs(captured, opaque=()) -> Tuple[int, Dict[str, int]]:
    """(total MACs, MACs per layer module) of one forward pass of a captured graph.

    Convolutions, Linear and nn.MultiheadAttention are attributed to their module (they shrink with
    its kept channels); matmul / attention ops between activations count in the total only. The
    numbers equal torch.utils.flop_counter's FLOPs / 2 for these ops, without its first-use cost.
    ``opaque``: names of modules the graph cannot see into (their MACs are counted by FlopCounterMode).
    """
    modules = dict(captured.gm.named_modules())
    layers: Dict[str, int] = {}
    other = 0
    for node in captured.gm.graph.nodes:
        out = captured.shape(node)
        if out is None and node.op != "call_module":
            continue
        if node.op == "call_module":
            macs = _module_macs(modules[node.target], node, captured)
            if macs:
                layers[str(node.target)] = layers.get(str(node.target), 0) + macs
        elif node.op in ("call_function", "call_method"):
            other += _op_macs(node, captured)
    total = int(sum(layers.values()) + other)
    if _has_opaque_compute(opaque, modules):  # e.g. an LSTM: let FlopCounterMode count what we cannot see
        from ..measure.macs import count_macs

        total = max(total, int(count_macs(captured.gm, captured.args)["macs"]))
    return total, layers


def _has_opaque_compute(opaque, modules) -> bool:
    for name in opaque:
        m = modules.get(name)
        if m is not None and any(p.dim() > 1 for p in m.parameters()):
            return True
    return False


def _numel(shape) -> int:
    return int(np.prod(shape)) if shape else 1


def _module_macs(m: nn.Module, node, captured) -> int:
    out = captured.shape(node)
    src = node.args[0] if node.args else None
    inp = captured.shape(src) if src is not None else None
    if isinstance(m, nn.Linear) and out is not None:
        return _numel(out) * m.in_features
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)) and out is not None:
        return _numel(out) * (m.in_channels // m.groups) * _numel(m.kernel_size)
    if isinstance(m, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) and inp is not None:
        return _numel(inp) * (m.out_channels // m.groups) * _numel(m.kernel_size)
    if isinstance(m, nn.MultiheadAttention) and inp is not None:
        quadratic, linear = _attention_macs(m, node, captured)
        return quadratic + linear
    return 0


def _attention_macs(m: nn.MultiheadAttention, node, captured) -> Tuple[int, int]:
    """An nn.MultiheadAttention call's MACs split into the projections (quadratic in the embedding width) and the
    attention scores and weighted sum (linear in it)."""
    src = node.args[0]
    inp = captured.shape(src)
    key = node.args[1] if len(node.args) > 1 else node.kwargs.get("key", src)
    kshape = captured.shape(key) or inp
    tokens_q, tokens_k, e = _numel(inp[:-1]), _numel(kshape[:-1]), m.embed_dim
    seq_k = kshape[-2] if len(kshape) > 2 and m.batch_first else kshape[0]
    return (tokens_q + 2 * tokens_k) * e * e + tokens_q * e * e, 2 * tokens_q * seq_k * e


def width_linear_macs(captured) -> Dict[str, int]:
    """Per attention module, the part of its MACs that scales linearly (not quadratically) with its width."""
    modules = dict(captured.gm.named_modules())
    out: Dict[str, int] = {}
    for node in captured.gm.graph.nodes:
        if node.op == "call_module" and isinstance(modules[node.target], nn.MultiheadAttention) \
                and captured.shape(node.args[0]) is not None:
            out[str(node.target)] = out.get(str(node.target), 0) + _attention_macs(modules[node.target], node, captured)[1]
    return out


def _op_macs(node, captured) -> int:
    from ..graph.ops import op_name

    name, out = op_name(node), captured.shape(node)
    if name in ("matmul", "bmm", "mm") or node.target is operator.matmul:
        a = captured.shape(node.args[0]) if isinstance(node.args[0], torch.fx.Node) else None
        return _numel(out) * a[-1] if a and out is not None else 0
    if name == "scaled_dot_product_attention":
        q, k = (captured.shape(a) for a in node.args[:2])
        return 2 * _numel(q) * k[-2] if q and k else 0
    return 0


def kept_fractions(graph, removed: set) -> Dict[Tuple[str, str], float]:
    """(module, member kind) -> fraction of its positions kept under ``removed`` atoms."""
    cache = graph.__dict__.setdefault("_member_roots", {})
    mask = np.zeros(len(graph.ids), dtype=bool)
    if removed:
        mask[np.fromiter(removed, dtype=np.int64, count=len(removed))] = True
    out = {}
    for key, member in graph.prop.members.items():
        if key not in cache:
            cache[key] = graph.ids.roots(member.ids)
        roots = cache[key]
        out[key] = 1.0 - np.count_nonzero(mask[roots]) / max(1, len(roots))
    return out


def estimate_macs(model: nn.Module, graph, removed: set, total: int, layers: Dict[str, int]) -> float:
    """MACs after removing ``removed``: each counted layer scales with its kept output x input fractions."""
    grouped = {name for name in layers if is_depthwise(model.get_submodule(name))}
    linear = graph.__dict__.setdefault("_width_linear", None)
    if linear is None:
        linear = graph.__dict__["_width_linear"] = width_linear_macs(graph.captured)
    return macs_after(total, layers, kept_fractions(graph, removed), grouped, linear)


def is_depthwise(module: nn.Module) -> bool:
    return getattr(module, "groups", 1) > 1 and getattr(module, "groups", 1) == getattr(module, "in_channels", -1)


def macs_after(total: float, layers: Dict[str, int], frac: Dict[Tuple[str, str], float], grouped,
               linear: Optional[Dict[str, int]] = None) -> float:
    """MACs after slicing: each counted layer scales with its kept output x input fractions
    (``grouped``: depthwise layers, one input channel per output channel, whose input fraction is already their
    output fraction; a grouped convolution's MACs scale with both)."""
    est = float(total)
    for name, macs in layers.items():
        f_out = min(frac.get((name, "out"), 1.0), frac.get((name, "embed"), 1.0))
        f_in = frac.get((name, "in"), 1.0)
        if name in grouped:
            f_in = 1.0
        if (name, "embed") in frac:
            f_in = frac[(name, "embed")]
        part = (linear or {}).get(name, 0)  # attention scores / weighted sum: linear in the width
        est -= (macs - part) * (1.0 - f_out * f_in) + part * (1.0 - f_out)
    return est


def search_ratio(removed_for: Callable[[float], set], estimate: Callable[[set], float], target: float,
                 total: int, hi: float = 0.999, steps: int = 24) -> float:
    """Smallest ratio (bisection) whose selection's estimated MACs are <= ``target``."""
    if estimate(removed_for(hi)) > target:
        best = estimate(removed_for(hi))
        raise PruningError(
            f"macs_target {target:.4g} MACs ({target / total:.1%} of {total}) cannot be reached: removing every "
            f"removable channel leaves {best:.4g} ({best / total:.1%}); lower the per-layer floor, un-ignore layers, "
            "or ask for a larger target"
        )
    lo = 0.0
    for _ in range(steps):
        mid = (lo + hi) / 2
        if estimate(removed_for(mid)) <= target:
            hi = mid
        else:
            lo = mid
    return hi


def resolve_target(macs_target: float, total: int) -> float:
    if macs_target is None or macs_target <= 0:
        raise PruningError(f"macs_target must be a positive fraction (<= 1) or an absolute MAC count, got {macs_target!r}")
    return float(macs_target) * total if macs_target <= 1 else float(macs_target)
