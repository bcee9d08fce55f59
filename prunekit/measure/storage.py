"""prunekit's sparse storage format: a state dict as flat safetensors-ready tensors, mostly-zero tensors as bitmap + values.

A tensor whose density (fraction of non-zero entries) is below ``SPARSE_DENSITY`` and
that has at least ``MIN_SPARSE_NUMEL`` entries is stored as three (or four) tensors::

    "<name>::bitmap"  uint8, numpy.packbits of the row-major "is non-zero" mask
    "<name>::values"  the non-zero entries in row-major order, same dtype as the tensor
    "<name>::shape"   int64, the tensor's shape
    "<name>::negzero" (only if the tensor holds -0.0) uint8, packed mask of the -0.0 entries

Every other tensor is stored under its own name, unchanged. NaN counts as non-zero and
signed zeros are kept, so :func:`from_sparse_state` restores every tensor bit-exactly.
``len(safetensors.torch.save(to_sparse_state(sd)))`` is the sparse size on disk.
"""
from __future__ import annotations

from typing import Dict, Mapping

import numpy as np
import torch

from ..errors import CheckpointError

SPARSE_DENSITY = 0.5  # tensors with fewer non-zeros than this fraction are stored as bitmap + values
MIN_SPARSE_NUMEL = 128  # smaller tensors stay dense: two extra header entries would cost more than they save
SEP = "::"  # separates a tensor name from its part name; never occurs in torch state-dict keys
PARTS = ("bitmap", "values", "shape")
NEGZERO = "negzero"  # optional part: bitmap of -0.0 entries, so signed zeros survive too

_SUPPORTED = {
    torch.float64, torch.float32, torch.float16, torch.bfloat16,
    torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8, torch.bool,
}


def nonzero_mask(t: torch.Tensor) -> torch.Tensor | None:
    """Boolean mask of entries that are not zero (NaN counts as non-zero), or None for dtypes kept dense."""
    if t.is_quantized or t.dtype not in _SUPPORTED:
        return None
    return t != 0


def negative_zero_mask(t: torch.Tensor) -> torch.Tensor | None:
    """Mask of ``-0.0`` entries (``weight_orig * mask`` makes them), or None when there are none."""
    if not t.is_floating_point():
        return None
    neg = (t == 0) & torch.signbit(t)
    return neg if bool(neg.any()) else None


def to_sparse_state(
    state_dict: Mapping[str, torch.Tensor], *, density: float = SPARSE_DENSITY, min_numel: int = MIN_SPARSE_NUMEL
) -> Dict[str, torch.Tensor]:
    """Encode ``state_dict`` (CPU copies) in the sparse format; the result can go straight to safetensors."""
    out: Dict[str, torch.Tensor] = {}
    for name, tensor in state_dict.items():
        if SEP in name:
            raise CheckpointError(f"state-dict key {name!r} contains {SEP!r}, which the sparse format reserves; rename it")
        t = tensor.detach().cpu()
        mask = nonzero_mask(t) if t.dim() > 0 and t.numel() >= max(min_numel, 1) else None
        if mask is None or mask.sum().item() >= density * t.numel():
            out[name] = t.contiguous().clone()
            continue
        flat = mask.reshape(-1).numpy()
        out[f"{name}{SEP}bitmap"] = torch.from_numpy(np.packbits(flat))
        out[f"{name}{SEP}values"] = t.reshape(-1)[mask.reshape(-1)].clone()
        out[f"{name}{SEP}shape"] = torch.tensor(list(t.shape), dtype=torch.int64)
        neg = negative_zero_mask(t)
        if neg is not None:
            out[f"{name}{SEP}{NEGZERO}"] = torch.from_numpy(np.packbits(neg.reshape(-1).numpy()))
    return out


def from_sparse_state(d: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Decode a dict made by :func:`to_sparse_state` back into the original state dict (keys in the order they are met)."""
    out: Dict[str, torch.Tensor] = {}
    for key, tensor in d.items():
        name, sep, part = key.rpartition(SEP)
        if not sep:
            out[key] = tensor
            continue
        if part not in PARTS + (NEGZERO,):
            raise CheckpointError(f"sparse tensor part {key!r} is unknown; expected one of {', '.join(PARTS + (NEGZERO,))}")
        if name not in out:
            out[name] = _decode(name, d)
    return out


def _decode(name: str, d: Mapping[str, torch.Tensor]) -> torch.Tensor:
    try:
        bitmap, values, shape = (d[f"{name}{SEP}{p}"] for p in PARTS)
    except KeyError as exc:
        raise CheckpointError(f"sparse tensor {name!r} is missing its part {exc.args[0]!r}; the checkpoint is truncated") from None
    shape = [int(s) for s in shape.tolist()]
    numel = int(np.prod(shape)) if shape else 1
    if bitmap.numel() != (numel + 7) // 8:
        raise CheckpointError(f"sparse tensor {name!r}: bitmap has {bitmap.numel()} bytes, shape {shape} needs {(numel + 7) // 8}")
    mask = torch.from_numpy(np.unpackbits(bitmap.numpy(), count=numel).astype(bool))
    if int(mask.sum()) != values.numel():
        raise CheckpointError(f"sparse tensor {name!r}: bitmap marks {int(mask.sum())} non-zeros but {values.numel()} values are stored")
    out = torch.zeros(numel, dtype=values.dtype)
    out[mask] = values
    neg = d.get(f"{name}{SEP}{NEGZERO}")
    if neg is not None:
        out[torch.from_numpy(np.unpackbits(neg.numpy(), count=numel).astype(bool))] = -0.0
    return out.reshape(shape)


def sparse_nbytes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Bytes of ``state_dict`` serialized by safetensors in the sparse format."""
    from safetensors.torch import save

    return len(save(to_sparse_state(state_dict)))


def dense_nbytes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Bytes of ``state_dict`` serialized by safetensors as plain dense tensors."""
    from safetensors.torch import save

    return len(save({k: v.detach().cpu().contiguous().clone() for k, v in state_dict.items()}))
