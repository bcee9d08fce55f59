"""The Deep-Compression file: pruned + weight-shared + entropy-coded weights, safe to load.

Layout::

    MAGIC (8 bytes)  b"\\x89PKDEEP\\n"
    uint32 LE        length of the header field
    header field     UTF-8 JSON (see below), or (version 2) a tag byte (1: zlib, 2: raw LZMA2), the
                     uint32 LE length of the JSON and the JSON so compressed: whichever is smallest
    32 bytes         sha256 of the header field's bytes
    blobs            one per stored tensor, back to back; the file ends with the last one

The header holds ``format`` ("prunekit-deep"), ``version``, ``entries`` (one per stored tensor:
name, dtype, shape and how it is stored), ``blobs`` (the size of each and, version 2, its crc32;
version 1, its sha256), ``blobs_sha256`` (version 2: the sha256 of all blobs together), and what
:func:`prunekit.save` stores for a checkpoint: ``masked`` (the masked parameters), ``plan`` (the
structured pruning record), ``model_spec``, ``user`` metadata, ``aliases`` (tied names) and
``state_metadata`` (per-module state-dict versions).

An entry is either

* ``"shared"``: a weight-shared tensor. Its blob is the codebook (the centroids in the tensor's
  dtype; version 1 raw, version 2 coded as a raw tensor is), then the positions of the kept
  weights (bitmap or relative gaps, see :mod:`prunekit.compress.streams`), then one cluster index
  per kept weight. Each stream records the coder that made it smallest (raw bits, Huffman, zlib,
  lzma or bz2). A masked weight (``X_orig`` + ``X_mask``) is one such entry: the mask is the kept
  positions.
* ``"raw"``: any other tensor (biases, BatchNorm statistics, unshared layers), its exact bytes,
  losslessly coded the same way; version 2 also tries the bytes regrouped by byte position
  (``"layout": "planes"``: every element's first byte, then every second byte, ...), which puts
  the sign and exponent bytes of floats side by side, where the coders find their repeats.

Writing is here; reading is :mod:`prunekit.compress.deep_read`. Loading runs no code named by the file and unpickles nothing: only JSON, numpy and the standard
library's decompressors (told the exact size to produce) read it. A truncated file, a changed
byte, a forged header or any inconsistency raises :class:`CheckpointError` naming the problem.
"""
from __future__ import annotations

import hashlib
import json
import lzma
import struct
import zlib
from typing import Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np
import torch
from torch import nn

from ..errors import CheckpointError
from ..modelutils import state_metadata
from ..unstructured.masks import masked_modules
from . import streams
from .sharing import FLOAT_DTYPES, SHARED_ATTR, Bits, cluster, resolve_bits

MAGIC = b"\x89PKDEEP\n"
FORMAT = "prunekit-deep"
VERSION = 2  # written; versions 1 (plain JSON header, a sha256 per blob, raw codebooks) and 2 are read
READABLE = (1, 2)
MAX_HEADER = 1 << 28  # a compressed header may not claim to inflate to more than this
HEADER_CODECS = {1: "zlib", 2: "lzma"}  # tag byte of a compressed header field
MAX_NUMEL = 1 << 31  # a forged shape cannot make the reader allocate more than this per tensor
ORIG, MASK = "_orig", "_mask"

DTYPES: Dict[str, torch.dtype] = {
    "float32": torch.float32, "float64": torch.float64, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool,
}
DTYPE_NAMES = {v: k for k, v in DTYPES.items()}


def is_deep_file(path) -> bool:
    """Whether ``path`` starts with the Deep-Compression magic."""
    try:
        with open(path, "rb") as f:
            return f.read(len(MAGIC)) == MAGIC
    except OSError:
        return False


# --- writing ---

def encode_deep(model: nn.Module, bits: Bits = None, *, metadata: Optional[Dict[str, Any]] = None,
                model_spec: Optional[Dict[str, Any]] = None, codecs: Iterable[str] = streams.CODECS,
                stats: Optional[List[dict]] = None, extra: Optional[Dict[str, Any]] = None) -> bytes:
    """The file's bytes for ``model`` (the model is not changed).

    ``bits`` (see :mod:`prunekit.compress.sharing`): which weights are shared and at how many
    bits; ``None`` uses the widths :func:`share_weights` recorded on the model, else the
    defaults. A weight already shared at those bits is stored exactly; any other is clustered
    as :func:`share_weights` would (deterministic), so loading gives the shared values.
    ``stats`` (a list) gets one dict of sizes per stored tensor. ``extra`` adds JSON entries to the
    header (``prunekit.save`` records its sparse kernels there); it cannot replace the file's own.
    """
    codecs = tuple(codecs)
    recorded = getattr(model, SHARED_ATTR, None)
    widths = dict(recorded) if bits is None and recorded else resolve_bits(model, bits)
    masked = sorted(f"{mod}.{p}" if mod else p for mod, _, p in masked_modules(model))
    state = model.state_dict()
    aliases = _aliases(state)
    entries: List[dict] = []
    blobs: List[bytes] = []
    done = set(aliases)
    for name, tensor in state.items():
        if name in done:
            continue
        t = tensor.detach().cpu()
        key, mask_key = _shared_key(name, state, widths, aliases)
        if key is not None:
            mask = state[mask_key].detach().cpu() if mask_key else None
            kept = (mask != 0) if mask is not None else (t != 0)
            layer = cluster(key, t, kept, widths[key])
            entry, blob, info = _shared_entry(name, t, layer, mask_key, codecs)
            done.update({name} | ({mask_key} if mask_key else set()))
        else:
            if t.is_quantized or t.dtype not in DTYPE_NAMES:
                raise CheckpointError(f"cannot save {name!r} in a Deep-Compression file: dtype {t.dtype} is not one of "
                                      f"{', '.join(DTYPES)}")
            if name.endswith(ORIG) and name[: -len(ORIG)] + MASK in state:  # an unshared masked weight: +0.0 where pruned
                m = state[name[: -len(ORIG)] + MASK].detach().cpu()
                if m.shape == t.shape:
                    t = torch.where(m != 0, t, torch.zeros((), dtype=t.dtype))
            entry, blob, info = _raw_entry(name, t, codecs)
            done.add(name)
        entry["blob"] = len(blobs)
        blobs.append(blob)
        entries.append(entry)
        if stats is not None:
            stats.append(info)
    header = {
        "format": FORMAT, "version": VERSION, "masked": masked,
        "plan": getattr(model, "_prunekit_plan", None) or None,
        "model_spec": model_spec or getattr(model, "_prunekit_spec", None),
        "user": metadata or {}, "aliases": aliases, "state_metadata": state_metadata(state),
        "entries": entries, "blobs": [{"size": len(b), "crc32": zlib.crc32(b)} for b in blobs],
        "blobs_sha256": hashlib.sha256(b"".join(blobs)).hexdigest(),
    }
    for key, value in (extra or {}).items():
        if key in header:
            raise CheckpointError(f"header entry {key!r} is the Deep-Compression file's own; it cannot be replaced")
        header[key] = value
    try:
        text = json.dumps(header, separators=(",", ":"), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"cannot save a Deep-Compression file: metadata and model_spec must be JSON data "
                              f"(dicts, lists, strings, numbers): {exc}") from exc
    field = pack_header(text)
    return b"".join([MAGIC, struct.pack("<I", len(field)), field, hashlib.sha256(field).digest(), *blobs])


def pack_header(text: bytes) -> bytes:
    """The header field: the JSON as is, or compressed (tag byte, uint32 LE JSON length, stream), whichever is smallest."""
    out = text
    for tag, codec in HEADER_CODECS.items():
        packed = bytes([tag]) + struct.pack("<I", len(text)) + streams.compress(codec, text)
        if len(packed) < len(out):
            out = packed
    return out


def unpack_header(field: bytes, what: str) -> bytes:
    """The header's JSON bytes from its field (see :func:`pack_header`)."""
    if not field or field[0] not in HEADER_CODECS:
        return field
    if len(field) < 5:
        raise CheckpointError(f"{what}: its compressed header is cut short; the file is damaged")
    (size,) = struct.unpack_from("<I", field, 1)
    if size > MAX_HEADER:
        raise CheckpointError(f"{what}: its header claims {size} bytes, more than a Deep-Compression file holds; "
                              "the file is damaged or forged")
    try:
        return streams.decompress(HEADER_CODECS[field[0]], field[5:], size)
    except (ValueError, zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
        raise CheckpointError(f"{what}: its compressed header does not decode ({exc}); the file is damaged") from None


def _shared_key(name: str, state: Mapping[str, torch.Tensor], widths: Mapping[str, int],
                aliases: Mapping[str, str]) -> Tuple[Optional[str], Optional[str]]:
    """``("module.weight", mask name or None)`` if ``name`` is a weight to share, else ``(None, None)``."""
    t = state[name]
    if t.dtype not in FLOAT_DTYPES or t.is_quantized or t.dim() == 0:
        return None, None
    tied = set(aliases.values())
    if name.endswith(ORIG):
        key, mask_key = name[: -len(ORIG)], name[: -len(ORIG)] + MASK
        if key not in widths or mask_key not in state or name in tied or mask_key in tied:
            return None, None
        if not _is_bit_mask(state[mask_key], t):
            return None, None
        return key, mask_key
    if name in widths and name not in tied:
        return name, None
    return None, None


def _is_bit_mask(mask: torch.Tensor, orig: torch.Tensor) -> bool:
    if mask.dtype != orig.dtype or mask.shape != orig.shape or mask.is_quantized:
        return False
    if mask.is_floating_point() and bool(torch.signbit(mask).any()):
        return False
    return bool(((mask == 0) | (mask == 1)).all())


def _tensor_bytes(t: torch.Tensor) -> bytes:
    if t.numel() == 0:
        return b""
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def encode_bytes(raw: bytes, itemsize: int, codecs, sizes: Optional[dict] = None) -> Tuple[dict, bytes]:
    """The smallest coding of a tensor's bytes: as they are, or (``itemsize`` > 1) regrouped by byte position."""
    data = np.frombuffer(raw, dtype=np.uint8)
    best = streams.encode_stream(data, 8, codecs, sizes)
    if itemsize > 1 and data.size >= 2 * itemsize:
        planes_sizes: dict = {}
        planes = streams.encode_stream(data.reshape(-1, itemsize).T.reshape(-1), 8, codecs, planes_sizes)
        planes = ({**planes[0], "layout": "planes"}, planes[1])
        if sizes is not None:
            sizes.update({f"planes/{k}": v for k, v in planes_sizes.items()})
        if streams.cost(*planes) + 8 < streams.cost(*best):
            best = planes
    return best


def decode_bytes(desc: dict, payload: bytes, itemsize: int, where: str) -> bytes:
    sym = streams.decode_stream(desc, payload, where).astype(np.uint8)
    layout = desc.get("layout")
    if layout == "planes":
        if sym.size % itemsize:
            raise CheckpointError(f"{where}: {sym.size} bytes in planes of {itemsize}; the file is damaged")
        sym = sym.reshape(itemsize, -1).T.reshape(-1)
    elif layout is not None:
        raise CheckpointError(f"{where}: unknown byte layout {layout!r}; the file is damaged")
    return sym.tobytes()


def _raw_entry(name: str, t: torch.Tensor, codecs) -> Tuple[dict, bytes, dict]:
    raw = _tensor_bytes(t)
    sizes: dict = {}
    desc, payload = encode_bytes(raw, t.element_size(), codecs, sizes)
    entry = {"name": name, "kind": "raw", "dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
             "data": {**desc, "size": len(payload)}}
    dense = t.numel() * 4 if t.is_floating_point() else len(raw)
    info = {"name": name, "kind": "raw", "dense_fp32": 0 if name.endswith(MASK) else dense, "pruned": len(raw),
            "shared": len(raw), "stored": len(payload), "candidates": sizes}
    return entry, payload, info


def _shared_entry(name: str, t: torch.Tensor, layer, mask_key: Optional[str], codecs) -> Tuple[dict, bytes, dict]:
    kept = layer.kept.reshape(-1).numpy()
    book_desc, book = encode_bytes(_tensor_bytes(layer.codebook), layer.codebook.element_size(), codecs)
    pos_sizes: dict = {}
    pos_desc, pos = streams.encode_positions(kept, codecs=codecs, sizes=pos_sizes)
    idx_sizes: dict = {}
    idx_desc, idx = streams.encode_stream(layer.indices.numpy(), layer.bits, codecs, idx_sizes)
    entry = {"name": name, "kind": "shared", "dtype": DTYPE_NAMES[t.dtype], "shape": list(t.shape),
             "bits": layer.bits, "mask": mask_key, "kept": int(kept.sum()), "k": int(layer.codebook.numel()),
             "codebook": {**book_desc, "size": len(book)}, "positions": {**pos_desc, "size": len(pos)},
             "indices": {**idx_desc, "size": len(idx)}}
    n_kept = int(kept.sum())
    packed_pos = streams.packed_position_bytes(kept)
    info = {"name": name, "kind": "shared", "bits": layer.bits, "numel": int(t.numel()), "kept": n_kept,
            "dense_fp32": t.numel() * 4, "pruned": n_kept * 4 + packed_pos,
            "shared": len(book) + (n_kept * layer.bits + 7) // 8 + packed_pos,
            "stored": len(book) + len(pos) + len(idx), "positions": pos_desc.get("scheme") + (
                str(pos_desc["gap_width"]) if pos_desc.get("scheme") == "gaps" else ""),
            "positions_codec": pos_desc["codec"], "indices_codec": idx_desc["codec"],
            "position_candidates": pos_sizes, "index_candidates": idx_sizes}
    return entry, book + pos + idx, info


def _aliases(state: Mapping[str, torch.Tensor]) -> Dict[str, str]:
    seen: Dict[tuple, str] = {}
    out: Dict[str, str] = {}
    for name, tensor in state.items():
        t = tensor.detach()
        if not t.numel():
            continue
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if ident in seen:
            out[name] = seen[ident]
        else:
            seen[ident] = name
    return out


# --- the size waterfall ---

def deep_compression_sizes(model: nn.Module, bits: Bits = None, *, codecs: Iterable[str] = streams.CODECS) -> dict:
    """Bytes at each step of Deep Compression, for a report: dense fp32 -> pruned -> + weight sharing -> + entropy coding.

    * ``dense_fp32``: every tensor of the model (masks excluded) at 4 bytes per float entry;
    * ``pruned``: kept weights as float32 plus their positions (the smaller of bitmap and
      bit-packed relative gaps), everything else raw;
    * ``shared``: codebooks + a ``bits``-bit index per kept weight + positions, the rest raw;
    * ``entropy_coded``: the blobs of the Deep-Compression file (each stream with its best coder);
    * ``file``: the whole file (``entropy_coded`` + magic, JSON header and digests).

    Also ``ratios`` (dense over each step) and ``layers`` (the per-tensor sizes and chosen coders).
    """
    stats: List[dict] = []
    data = encode_deep(model, bits, codecs=codecs, stats=stats)
    out = {step: sum(s[step] for s in stats) for step in ("dense_fp32", "pruned", "shared")}
    out["entropy_coded"] = sum(s["stored"] for s in stats)
    out["file"] = len(data)
    dense = out["dense_fp32"]
    out["ratios"] = {k: (dense / out[k] if out[k] else float("inf")) for k in ("pruned", "shared", "entropy_coded", "file")}
    out["layers"] = stats
    return out
