"""prunekit's sparse storage format: a state dict as flat safetensors-ready tensors, mostly-zero tensors as bitmap + values.

A tensor whose density (fraction of non-zero entries) is below ``SPARSE_DENSITY`` and
that has at least ``MIN_SPARSE_NUMEL`` entries is stored as three (or four) tensors::

    "<name>::bitmap"  uint8, numpy.packbits of the row-major "is non-zero" mask
    "<name>::values"  the non-zero entries in row-major order, same dtype as the tensor
    "<name>::shape"   int64, the tensor's shape
    "<name>::negzero" (only if the tensor holds -0.0) uint8, packed mask of the -0.0 entries

Every other tensor is stored under its own name, unchanged. NaN counts as non-zero and
signed zeros are kept, so :func:`from_sparse_state` restores every tensor bit-exactly.

Checkpoints (:func:`prunekit.save`) go through :func:`encode_state` first, dense or sparse: a
0/1 pruning mask ``X_mask`` is stored as ``"X_mask::nonzero"`` (empty marker: the mask is
``X_orig != 0``) or ``"X_mask::maskbits"`` (uint8 packbits; shape and dtype are those of
``X_orig``), ``X_orig`` holds +0.0 where the mask is 0, and tied tensors are stored once. :func:`decode_state` inverts it. :func:`checkpoint_nbytes` (and :func:`dense_nbytes` /
:func:`sparse_nbytes` of ``model.state_dict()``) is the checkpoint's size on disk minus its JSON header.
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

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
    """Bytes of ``state_dict`` serialized by safetensors in prunekit's sparse checkpoint encoding (:func:`encode_state`).

    Given ``model.state_dict()`` this is what ``prunekit.save(model, path, sparse=True)`` writes minus
    its JSON metadata header (see :func:`checkpoint_nbytes`).
    """
    return _nbytes(encode_state(state_dict, sparse=True)[0])


def dense_nbytes(state_dict: Mapping[str, torch.Tensor]) -> int:
    """Bytes of ``state_dict`` serialized by safetensors in prunekit's dense checkpoint encoding (:func:`encode_state`).

    Without masks (e.g. :func:`~prunekit.measure.effective_state_dict`) that is plain safetensors of the
    tensors; ``X_orig`` + ``X_mask`` pairs count as prunekit.save stores them (weights + 1 bit per mask entry).
    """
    return _nbytes(encode_state(state_dict, sparse=False)[0])


# --- the checkpoint encoding: exactly the tensors prunekit.save writes (and the sizes measure reports) ---

MASKBITS = "maskbits"  # "<name>_mask::maskbits": uint8 packbits of a 0/1 pruning mask; shape and dtype are its weight_orig's
MASK_NONZERO = "nonzero"  # "<name>_mask::nonzero": empty marker, the mask is "X_orig != 0" (every kept weight is non-zero)
ORIG, MASK = "_orig", "_mask"  # torch.nn.utils.prune's parameter / buffer suffixes


def masked_pairs(state_dict: Mapping[str, torch.Tensor]) -> List[str]:
    """Names ``X`` with both ``X_orig`` and ``X_mask`` in ``state_dict`` (torch.nn.utils.prune's layout)."""
    return [k[: -len(ORIG)] for k in state_dict if k.endswith(ORIG) and k[: -len(ORIG)] + MASK in state_dict]


def encode_state(
    state_dict: Mapping[str, torch.Tensor], *, sparse: bool = False, masked: Optional[Iterable[str]] = None
) -> Tuple[Dict[str, torch.Tensor], Dict[str, str]]:
    """``(tensors, aliases)``: the tensors :func:`prunekit.save` writes for ``state_dict`` and the tied names it drops.

    * A name holding the very tensor of an earlier name (tied weights) is not stored again:
      ``aliases[name] = earlier name``.
    * Each masked parameter ``X`` (``masked``, default: every ``X_orig`` + ``X_mask`` pair) is
      stored as ``X_orig`` with +0.0 where the mask is 0 (what the model computes with:
      ``orig * mask``; a pruned weight never revives) and, when the mask holds only 0 and 1
      in ``X_orig``'s dtype and shape, ``X_mask`` as ``"X_mask::nonzero"`` (an empty marker:
      the mask is ``X_orig != 0``, true unless a kept weight is exactly zero) or else as
      ``"X_mask::maskbits"`` (1 bit per entry). Other masks are stored as they are.
    * ``sparse=True`` then stores mostly-zero tensors as bitmap + values (:func:`to_sparse_state`).

    :func:`decode_state` inverts it exactly (masks equal, effective weights equal).
    """
    for name in state_dict:
        if SEP in name:
            raise CheckpointError(f"state-dict key {name!r} contains {SEP!r}, which prunekit's file format reserves; rename it")
    plain: Dict[str, torch.Tensor] = {}
    aliases: Dict[str, str] = {}
    seen: Dict[tuple, str] = {}
    for name, tensor in state_dict.items():
        t = tensor.detach().cpu()
        if t.numel():
            ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
            if ident in seen:
                aliases[name] = seen[ident]
                continue
            seen[ident] = name
        plain[name] = t
    tied = set(aliases.values())
    bits: Dict[str, torch.Tensor] = {}
    for base in (masked_pairs(state_dict) if masked is None else masked):
        o, m = base + ORIG, base + MASK
        if o not in plain or m not in plain or o in tied or m in tied:
            continue  # tied masked weights are stored as they are: another name computes with them too
        orig, mask = plain[o], plain[m]
        if mask.shape != orig.shape:
            continue
        keep = mask != 0
        plain[o] = torch.where(keep, orig, torch.zeros((), dtype=orig.dtype))
        if _is_bit_mask(mask, orig):
            if torch.equal(keep, plain[o] != 0):
                bits[f"{m}{SEP}{MASK_NONZERO}"] = torch.zeros(0, dtype=torch.uint8)
            else:
                bits[f"{m}{SEP}{MASKBITS}"] = torch.from_numpy(np.packbits(keep.reshape(-1).numpy()))
            del plain[m]
    out = to_sparse_state(plain) if sparse else _unshared(plain)
    out.update(bits)
    return out, aliases


def decode_state(tensors: Mapping[str, torch.Tensor], *, sparse: bool = False,
                 aliases: Optional[Mapping[str, str]] = None) -> Dict[str, torch.Tensor]:
    """The state dict :func:`encode_state` encoded: masks unpacked, sparse tensors expanded, tied names restored."""
    suffixes = (SEP + MASKBITS, SEP + MASK_NONZERO)
    bits = {k.rpartition(SEP)[0]: (k.rpartition(SEP)[2], v) for k, v in tensors.items() if k.endswith(suffixes)}
    rest = {k: v for k, v in tensors.items() if not k.endswith(suffixes)}
    if sparse:
        state = from_sparse_state(rest)
    else:
        odd = [k for k in rest if SEP in k]
        if odd:
            raise CheckpointError(f"tensor {odd[0]!r} has a sparse-format name but the checkpoint is not marked sparse; "
                                  "the file is damaged or was not written by prunekit.save")
        state = dict(rest)
    for m, (part, packed) in bits.items():
        if not m.endswith(MASK):
            raise CheckpointError(f"tensor {m!r} is stored as a mask bitmap but is not named '..._mask'; the checkpoint is damaged")
        o = m[: -len(MASK)] + ORIG
        orig = state.get(o)
        if orig is None:
            raise CheckpointError(f"mask {m!r} is stored as a bitmap but its weight {o!r} is missing; "
                                  "the checkpoint is truncated or damaged")
        if part == MASK_NONZERO:
            state[m] = (orig != 0).to(orig.dtype)
            continue
        numel = orig.numel()
        if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != (numel + 7) // 8:
            raise CheckpointError(f"mask {m!r}: its bitmap has {packed.numel()} {packed.dtype} entries, the weight "
                                  f"{o!r} of shape {list(orig.shape)} needs {(numel + 7) // 8} uint8; the checkpoint is damaged")
        keep = np.unpackbits(packed.numpy(), count=numel).astype(bool)
        state[m] = torch.from_numpy(keep).reshape(orig.shape).to(orig.dtype)
    for name, target in (aliases or {}).items():
        if target not in state:
            raise CheckpointError(f"tensor {name!r} is recorded as tied to {target!r}, which the checkpoint lacks; it is damaged")
        state[name] = state[target]
    return state


def checkpoint_nbytes(model: nn.Module, *, sparse: bool = False) -> int:
    """Bytes of the tensors :func:`prunekit.save` ``(model, path, sparse=sparse)`` writes, serialized by safetensors.

    The ``.safetensors`` file is this plus prunekit's JSON metadata (architecture, plan,
    checksums: typically a few hundred bytes to a few KB); a ``.pt`` file adds torch's zip framing.
    """
    from ..unstructured.masks import masked_modules

    masked = [f"{mod}.{p}" if mod else p for mod, _, p in masked_modules(model)]
    return _nbytes(encode_state(model.state_dict(), sparse=sparse, masked=masked)[0])


def _is_bit_mask(mask: torch.Tensor, orig: torch.Tensor) -> bool:
    """0/1 only (no -0.0, no NaN), same dtype as the weight: a bitmap restores it exactly."""
    if mask.dtype != orig.dtype or mask.shape != orig.shape or mask.is_quantized:
        return False
    if mask.dtype == torch.bool:
        return True
    if mask.is_floating_point() and bool(torch.signbit(mask).any()):
        return False
    return bool(((mask == 0) | (mask == 1)).all())


def _unshared(state: Mapping[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Contiguous tensors, copying any that shares memory with an earlier one (safetensors refuses shared memory)."""
    out: Dict[str, torch.Tensor] = {}
    used = set()
    for name, t in state.items():
        t = t.contiguous()
        ptr = t.untyped_storage().data_ptr() if t.numel() else None
        if ptr is not None and ptr in used:
            t = t.clone()
            ptr = t.untyped_storage().data_ptr()
        if ptr is not None:
            used.add(ptr)
        out[name] = t
    return out


def _nbytes(tensors: Mapping[str, torch.Tensor]) -> int:
    from safetensors.torch import save

    return len(save(dict(tensors)))
