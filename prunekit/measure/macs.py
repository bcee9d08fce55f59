"""Multiply-accumulates of one forward pass (torch.utils.flop_counter), attributed to the weighted leaf layers that run them."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, Iterator

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from .._inputs import Inputs, run_model
from .counts import weight_density, weighted_leaves


def _cpu_sdpa_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    # torch's flop table lacks the CPU flash-attention kernel that F.scaled_dot_product_attention uses on CPU
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _mkldnn_rnn_layer_flops(input_shape, w_ih_shape, w_hh_shape, *args, out_shape=None, **kwargs) -> int:
    # one LSTM layer/direction on CPU: every time step of every sequence multiplies by W_ih and W_hh
    steps = math.prod(input_shape) // input_shape[-1]
    return 2 * steps * (math.prod(w_ih_shape) + math.prod(w_hh_shape))


def _custom_flops() -> dict:
    """Kernels torch's flop table does not know; without them attention and LSTMs on CPU would count zero."""
    table = {}
    for name, fn in (("_scaled_dot_product_flash_attention_for_cpu", _cpu_sdpa_flops),
                     ("mkldnn_rnn_layer", _mkldnn_rnn_layer_flops)):
        op = getattr(torch.ops.aten, name, None)
        if op is not None:
            table[op] = fn
    return table


@contextlib.contextmanager
def no_mha_fastpath() -> Iterator[None]:
    """Route nn.MultiheadAttention / TransformerEncoderLayer through their countable (non-fused) path."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    was = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(was)


def count_macs(model: nn.Module, example_inputs: Inputs) -> Dict[str, Any]:
    """Dense MACs of one forward pass on ``example_inputs``, total and per weighted leaf layer.

    Returns ``{"macs": int, "layers": {name: macs}}``; MACs = FLOPs / 2 as counted by
    FlopCounterMode (conv, linear, matmul/bmm, attention). The model should be in eval mode;
    call through :func:`prunekit.measure.measure` or :func:`per_layer` to get that for free.
    """
    layer_flops: Dict[str, int] = {}
    mode = FlopCounterMode(display=False, custom_mapping=_custom_flops())
    handles = []
    for name, module in weighted_leaves(model):
        handles.append(module.register_forward_pre_hook(_enter(mode, name, layer_flops)))
        handles.append(module.register_forward_hook(_leave(mode, name, layer_flops)))
    try:
        with torch.no_grad(), no_mha_fastpath(), mode:
            run_model(model, example_inputs)
    finally:
        for h in handles:
            h.remove()
    return {"macs": mode.get_total_flops() // 2, "layers": {k: v // 2 for k, v in layer_flops.items()}}


def _enter(mode: FlopCounterMode, name: str, acc: Dict[str, int]):
    def hook(module, args):
        acc[name] = acc.get(name, 0) - mode.get_total_flops()

    return hook


def _leave(mode: FlopCounterMode, name: str, acc: Dict[str, int]):
    def hook(module, args, output):
        acc[name] = acc.get(name, 0) + mode.get_total_flops()

    return hook


def nonzero_macs(model: nn.Module, counted: Dict[str, Any]) -> int:
    """MACs left if zero weights were skipped: each layer's MACs times its weight density; the rest dense."""
    densities = {name: weight_density(module) for name, module in weighted_leaves(model)}
    layer_macs = counted["layers"]
    in_layers = sum(layer_macs.values())
    sparse = sum(m * densities.get(name, 1.0) for name, m in layer_macs.items())
    return int(round(counted["macs"] - in_layers + sparse))
