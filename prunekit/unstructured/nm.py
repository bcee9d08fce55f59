"""N:M semi-structured sparsity (``pattern="2:4"``): at most N non-zero weights in every M consecutive ones.

The convention is NVIDIA's (Ampere sparse tensor cores, cuSPARSELt, TensorRT, apex ASP): "2:4" keeps **2 of every
4** weights, so the sparsity is ``1 - N/M`` (50% for 2:4). Groups run along the input dimension of each output
row: ``in_features`` of a Linear (and of nn.MultiheadAttention's in_proj; dim 0 of Hugging Face's ``Conv1D``,
whose weight is stored ``(in, out)``), ``in_channels`` of a conv -- for each
output channel and each kernel position, M consecutive input channels form a group, as apex ASP lays them out for
an implicit-GEMM conv (so ``in_channels``, not ``in_channels * kh * kw``, must be divisible by M). Within a group
the N highest-scoring weights are kept (any weight criterion's scores; SparseGPT chooses them during its
reconstruction); an already-pruned weight is never kept again, so a group may end with fewer than N.

The result is an ordinary ``weight_mask``: CPU kernels run it as dense (no speed-up on CPU); 2:4 is the format GPU
runtimes consume (e.g. ``torch.sparse.to_sparse_semi_structured`` or TensorRT on a finalized model).
"""
from __future__ import annotations

import re
from typing import Optional, Tuple

import torch
from torch import nn

from ..errors import ConfigError
from .layout import transposed

_PATTERN = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


def parse_pattern(pattern) -> Optional[Tuple[int, int]]:
    """``"N:M"`` -> ``(N, M)`` (None -> None); :class:`ConfigError` unless ``1 <= N < M``."""
    if pattern is None:
        return None
    found = _PATTERN.match(pattern) if isinstance(pattern, str) else None
    if not found:
        raise ConfigError(f"pattern must be an 'N:M' string such as '2:4' (keep N of every M consecutive weights), "
                          f"got {pattern!r}")
    n, m = int(found.group(1)), int(found.group(2))
    if not 1 <= n < m:
        raise ConfigError(f"pattern={pattern!r}: N:M keeps N of every M weights, so it needs 1 <= N < M (NVIDIA's "
                          f"2:4 keeps 2 of 4); got N={n}, M={m}" + (f" (did you mean '{m}:{n}'?)" if m < n else ""))
    return n, m


def pattern_sparsity(n: int, m: int) -> float:
    """The fraction of weights an N:M pattern removes: ``1 - N/M``."""
    return 1.0 - n / m


def input_axis(module: nn.Module) -> int:
    """The weight axis N:M groups run along: in_features / in_channels (dim 0 of a transposed conv and of Hugging
    Face's ``Conv1D``, dim 1 otherwise)."""
    return 0 if isinstance(module, nn.modules.conv._ConvTransposeNd) or transposed(module) else 1


def check_divisible(key: str, shape, axis: int, m: int, pattern: str) -> None:
    """:class:`ConfigError` naming the layer when its input dimension is not a multiple of M."""
    size = shape[axis] if len(shape) > axis else 1
    if size % m:
        raise ConfigError(f"pattern={pattern!r} groups {m} consecutive weights along the input dimension, but "
                          f"{key!r} (shape {tuple(shape)}) has {size} there, not a multiple of {m}; exclude the layer "
                          f"(exclude=[{key.rpartition('.')[0]!r}]) or choose an M that divides it")


def nm_mask(scores: torch.Tensor, n: int, m: int, axis: int = 1) -> torch.Tensor:
    """Keep-mask with the ``n`` highest scores of every ``m`` consecutive entries along ``axis`` (ties: first
    index first); entries scoring ``-inf`` (already pruned) are never kept. ``shape[axis] % m == 0``."""
    moved = scores.movedim(axis, -1)
    groups = moved.reshape(-1, m)
    order = torch.sort(groups, dim=1, descending=True, stable=True).indices
    keep = torch.zeros_like(groups, dtype=torch.bool)
    keep.scatter_(1, order[:, :n], True)
    keep &= torch.isfinite(groups)
    return keep.reshape(moved.shape).movedim(-1, axis).float()


def column_order(shape, m: int) -> torch.Tensor:
    """For a weight of ``shape`` (out, in, *kernel) seen as ``(out, in * K)``: the column permutation after which
    every M consecutive columns are M consecutive input channels at one kernel position (identity for Linear)."""
    cin = shape[1]
    k = 1
    for s in shape[2:]:
        k *= s
    return torch.arange(cin * k).reshape(cin, k).T.reshape(-1)
