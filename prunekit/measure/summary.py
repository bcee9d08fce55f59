"""The measure() summary of a model (size, MACs, latency) and its per-layer breakdown."""
from __future__ import annotations

import numbers
from typing import Iterable, List, Optional

import torch
from torch import nn

from .._inputs import Inputs, split_inputs, to_device, with_batch_size
from ..errors import ConfigError
from .counts import (count_nonzero_params, count_params, dedup_tensors, dense_equivalent, effective_state_dict,
                     layer_counts, weighted_leaves)
from .latency import eval_state, num_threads, time_forward
from .macs import count_macs, nonzero_macs
from .storage import dense_nbytes, sparse_nbytes


def measure(
    model: nn.Module,
    example_inputs: Inputs,
    *,
    latency: bool = True,
    batch_sizes: Iterable[int] = (),
    repeats: int = 30,
    warmup: int = 5,
    threads: Optional[int] = None,
) -> dict:
    """Size, compute and speed of ``model`` on ``example_inputs`` (a Tensor, tuple or dict).

    Keys: ``params``, ``nonzero_params``, ``macs`` / ``nonzero_macs`` (one forward at the
    example batch), ``size_bytes`` / ``sparse_size_bytes`` (safetensors, dense / prunekit
    sparse format, effective weights without masks) and, when ``latency``, ``latency_ms`` +
    ``latency_iqr_ms`` at the example batch and ``latency_ms_b{n}`` / ``latency_iqr_ms_b{n}``
    for each ``n`` in ``batch_sizes``. The model's train/eval state is restored afterwards.
    """
    split_inputs(example_inputs)  # wrong container types fail here with an InputError
    batch_sizes = tuple(batch_sizes)
    if any(not isinstance(n, numbers.Integral) or isinstance(n, bool) or n < 1 for n in batch_sizes):
        raise ConfigError(f"measure batch_sizes must be positive integers, got {list(batch_sizes)}")
    inputs = to_device(example_inputs, _device(model))
    counted_model = dense_equivalent(model)  # sparse-kernel layers counted as the dense layers they compute
    state = dedup_tensors(effective_state_dict(counted_model))
    out = {
        "params": count_params(counted_model),
        "nonzero_params": count_nonzero_params(counted_model),
    }
    with eval_state(model), eval_state(counted_model):
        counted = count_macs(counted_model, inputs)
        out["macs"] = counted["macs"]
        out["nonzero_macs"] = nonzero_macs(counted_model, counted)
        out["size_bytes"] = dense_nbytes(state)
        out["sparse_size_bytes"] = sparse_nbytes(state)
        if latency:
            with num_threads(threads):
                out.update(_latencies(model, inputs, batch_sizes, repeats, warmup))
    return out


def _latencies(model: nn.Module, inputs: Inputs, batch_sizes: Iterable[int], repeats: int, warmup: int) -> dict:
    t = time_forward(model, inputs, repeats=repeats, warmup=warmup)
    out = {"latency_ms": t["median_ms"], "latency_iqr_ms": t["iqr_ms"]}
    for n in batch_sizes:
        t = time_forward(model, with_batch_size(inputs, int(n)), repeats=repeats, warmup=warmup)
        out[f"latency_ms_b{int(n)}"] = t["median_ms"]
        out[f"latency_iqr_ms_b{int(n)}"] = t["iqr_ms"]
    return out


def per_layer(model: nn.Module, example_inputs: Inputs | None = None) -> List[dict]:
    """One row per leaf layer with a weight: ``name, type, shape, params, nonzero, sparsity, macs, nonzero_macs``.

    ``params`` / ``nonzero`` cover all the layer's own parameters (weight and bias, masks
    applied); ``sparsity`` is the zero fraction of its weight. Without ``example_inputs``
    the MAC columns are None.
    """
    counted = None
    model = dense_equivalent(model)
    if example_inputs is not None:
        with eval_state(model):
            counted = count_macs(model, to_device(example_inputs, _device(model)))
    rows = []
    for name, module in weighted_leaves(model):
        row = {"name": name, "type": type(module).__name__, **layer_counts(module)}
        macs = counted["layers"].get(name, 0) if counted else None
        row["macs"] = macs
        row["nonzero_macs"] = None if macs is None else int(round(macs * (1.0 - row["sparsity"])))
        rows.append(row)
    return rows


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    if p is None:
        p = next(model.buffers(), None)
    return p.device if p is not None else torch.device("cpu")
