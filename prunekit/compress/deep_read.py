"""Reading a Deep-Compression file (the layout is described in :mod:`prunekit.compress.file`): every length,
digest, dtype and shape is checked before anything is allocated; nothing a file names is run."""
from __future__ import annotations

import hashlib
import json
import struct
import zlib
from pathlib import Path
from typing import Any, Dict, List, Tuple

import numpy as np
import torch

from ..errors import CheckpointError
from . import streams
from .file import DTYPE_NAMES, DTYPES, FORMAT, MAGIC, MAX_NUMEL, READABLE, decode_bytes, unpack_header
from .sharing import FLOAT_DTYPES


def read_deep(path) -> Tuple[Dict[str, torch.Tensor], dict]:
    """``(state_dict, header)`` of a Deep-Compression file: digests verified, every tensor decoded."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CheckpointError(f"cannot read Deep-Compression file {str(path)!r}: {exc}") from exc
    return decode_deep(data, str(path))


def decode_deep(data: bytes, where: str = "<bytes>") -> Tuple[Dict[str, torch.Tensor], dict]:
    """:func:`read_deep` of the file's bytes; ``where`` names the file in errors."""
    what = f"Deep-Compression file {where!r}"
    if data[: len(MAGIC)] != MAGIC:
        raise CheckpointError(f"{what} does not start with the Deep-Compression magic; it is not such a file")
    if len(data) < len(MAGIC) + 4:
        raise CheckpointError(f"{what} is truncated: it ends inside its header length")
    (hlen,) = struct.unpack_from("<I", data, len(MAGIC))
    start = len(MAGIC) + 4
    body = start + hlen + 32
    if len(data) < body:
        raise CheckpointError(f"{what} is truncated: its header needs {body} bytes, the file has {len(data)}")
    text, digest = data[start:start + hlen], data[start + hlen:body]
    if hashlib.sha256(text).digest() != digest:
        raise CheckpointError(f"{what} is corrupt: its header does not match its sha256 (a changed or forged header). "
                              "Restore a good copy or save the model again.")
    text = unpack_header(text, what)
    try:
        header = json.loads(text.decode("utf-8"))
    except ValueError as exc:
        raise CheckpointError(f"{what} is corrupt: its header is not valid JSON ({exc})") from None
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise CheckpointError(f"{what}: its header format is not {FORMAT!r}; it is damaged")
    version = header.get("version")
    if version not in READABLE or isinstance(version, bool):
        raise CheckpointError(f"{what} has format version {version!r}; this prunekit reads versions "
                              f"{', '.join(map(str, READABLE))}. It was written by a newer prunekit (upgrade prunekit) "
                              "or it is damaged.")
    blobs = _blobs(header, data, body, what)
    entries = header.get("entries")
    if not isinstance(entries, list):
        raise CheckpointError(f"{what}: its header entry 'entries' is malformed; the file is damaged")
    state: Dict[str, torch.Tensor] = {}
    used = set()
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise CheckpointError(f"{what}: entry {i} of its header is malformed; the file is damaged")
        name = entry["name"]
        at = f"{what}, tensor {name!r}"
        b = entry.get("blob")
        if not isinstance(b, int) or not 0 <= b < len(blobs) or b in used:
            raise CheckpointError(f"{at}: names blob {b!r}, which is missing or used twice; the file is damaged")
        used.add(b)
        try:
            decoded = _decode_entry(entry, blobs[b], at)
        except CheckpointError:
            raise
        except (KeyError, TypeError, ValueError, IndexError, OverflowError, RuntimeError) as exc:
            raise CheckpointError(f"{at}: malformed entry ({type(exc).__name__}: {str(exc)[:200]}); the file is damaged") from None
        for k, v in decoded.items():
            if k in state:
                raise CheckpointError(f"{at}: the header stores {k!r} twice; the file is damaged")
            state[k] = v
    if len(used) != len(blobs):
        raise CheckpointError(f"{what}: its header lists blobs no tensor uses; the file was altered or damaged")
    aliases = header.get("aliases") or {}
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise CheckpointError(f"{what}: its header entry 'aliases' is malformed; the file is damaged")
    for name, target in aliases.items():
        if target not in state or name in state:
            raise CheckpointError(f"{what}: tensor {name!r} is recorded as tied to {target!r}, which does not fit; it is damaged")
        state[name] = state[target]
    return state, header


def _blobs(header: dict, data: bytes, body: int, what: str) -> List[bytes]:
    table = header.get("blobs")
    v1 = header["version"] == 1
    check = (lambda b: isinstance(b.get("sha256"), str)) if v1 else (lambda b: isinstance(b.get("crc32"), int))
    if not isinstance(table, list) or not all(isinstance(b, dict) and isinstance(b.get("size"), int) and b["size"] >= 0
                                              and check(b) for b in table):
        raise CheckpointError(f"{what}: its header entry 'blobs' is malformed; the file is damaged")
    if not v1 and not isinstance(header.get("blobs_sha256"), str):
        raise CheckpointError(f"{what}: its header entry 'blobs_sha256' is malformed; the file is damaged")
    total = body + sum(b["size"] for b in table)
    if len(data) < total:
        raise CheckpointError(f"{what} is truncated: it should have {total} bytes, it has {len(data)}. "
                              "Restore a good copy or save the model again.")
    if len(data) > total:
        raise CheckpointError(f"{what} has {len(data) - total} bytes after its last blob; the file was altered or damaged")
    out, at = [], body
    for i, b in enumerate(table):
        blob = data[at:at + b["size"]]
        at += b["size"]
        if (hashlib.sha256(blob).hexdigest() != b["sha256"]) if v1 else (zlib.crc32(blob) != b["crc32"]):
            raise CheckpointError(f"{what} is corrupt: blob {i} ({_blob_owner(header, i)}) does not match its "
                                  f"{'sha256' if v1 else 'checksum (crc32)'}. Restore a good copy or save the model again.")
        out.append(blob)
    if not v1 and hashlib.sha256(data[body:]).hexdigest() != header["blobs_sha256"]:
        raise CheckpointError(f"{what} is corrupt: its blobs do not match their sha256. "
                              "Restore a good copy or save the model again.")
    return out


def _blob_owner(header: dict, i: int) -> str:
    for e in header.get("entries") or []:
        if isinstance(e, dict) and e.get("blob") == i:
            return f"tensor {e.get('name')!r}"
    return "no tensor"


def _dtype_shape(entry: dict, at: str) -> Tuple[torch.dtype, List[int], int]:
    dtype = DTYPES.get(entry.get("dtype")) if isinstance(entry.get("dtype"), str) else None
    if dtype is None:
        raise CheckpointError(f"{at}: unknown dtype {entry.get('dtype')!r} (known: {', '.join(DTYPES)}); the file is damaged")
    shape = entry.get("shape")
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise CheckpointError(f"{at}: malformed shape {shape!r}; the file is damaged")
    numel = int(np.prod(shape, dtype=object)) if shape else 1
    if numel > MAX_NUMEL:
        raise CheckpointError(f"{at}: shape {shape} has {numel} entries, more than a Deep-Compression file holds; "
                              "the file is damaged or forged")
    return dtype, shape, numel


def _split(blob: bytes, sizes: List[Any], at: str) -> List[bytes]:
    if not all(isinstance(s, int) and s >= 0 for s in sizes) or sum(sizes) != len(blob):
        raise CheckpointError(f"{at}: its stream sizes {sizes} do not add up to its blob of {len(blob)} bytes; "
                              "the file is damaged")
    out, p = [], 0
    for s in sizes:
        out.append(blob[p:p + s])
        p += s
    return out


def _from_bytes(raw: bytes, dtype: torch.dtype, shape: List[int], at: str) -> torch.Tensor:
    itemsize = torch.empty((), dtype=dtype).element_size()
    numel = int(np.prod(shape, dtype=object)) if shape else 1
    if len(raw) != numel * itemsize:
        raise CheckpointError(f"{at}: holds {len(raw)} bytes, {numel} {DTYPE_NAMES[dtype]} entries need "
                              f"{numel * itemsize}; the file is damaged")
    if numel == 0:
        return torch.empty(shape, dtype=dtype)
    return torch.frombuffer(bytearray(raw), dtype=torch.uint8).view(dtype).reshape(shape).clone()


def _decode_entry(entry: dict, blob: bytes, at: str) -> Dict[str, torch.Tensor]:
    dtype, shape, numel = _dtype_shape(entry, at)
    kind = entry.get("kind")
    if kind == "raw":
        desc = entry["data"]
        (payload,) = _split(blob, [desc.get("size")], at)
        raw = decode_bytes(desc, payload, torch.empty((), dtype=dtype).element_size(), at)
        return {entry["name"]: _from_bytes(raw, dtype, shape, at)}
    if kind != "shared":
        raise CheckpointError(f"{at}: unknown entry kind {kind!r}; the file is damaged")
    if dtype not in FLOAT_DTYPES:
        raise CheckpointError(f"{at}: a weight-shared tensor must be floating point, the header says {DTYPE_NAMES[dtype]}")
    bits, k, count, mask_key = entry["bits"], entry["k"], entry["kept"], entry.get("mask")
    if not (isinstance(bits, int) and 1 <= bits <= 8 and isinstance(k, int) and 0 <= k <= 1 << bits
            and isinstance(count, int) and 0 <= count <= numel and (k > 0 or count == 0)):
        raise CheckpointError(f"{at}: inconsistent bits {bits!r} / codebook size {k!r} / kept count {count!r}; "
                              "the file is damaged")
    if mask_key is not None and (not isinstance(mask_key, str) or mask_key == entry["name"]):
        raise CheckpointError(f"{at}: malformed mask name {mask_key!r}; the file is damaged")
    pos_desc, idx_desc, book_desc = entry["positions"], entry["indices"], entry["codebook"]
    book_raw, pos, idx = _split(blob, [book_desc.get("size"), pos_desc.get("size"), idx_desc.get("size")], at)
    if "codec" in book_desc:  # version 2: coded like a raw tensor
        book_raw = decode_bytes(book_desc, book_raw, torch.empty((), dtype=dtype).element_size(), f"{at} (codebook)")
    codebook = _from_bytes(book_raw, dtype, [k], f"{at} (codebook)")
    kept = streams.decode_positions(pos_desc, pos, numel, count, f"{at} (positions)")
    if idx_desc.get("width") != bits:
        raise CheckpointError(f"{at} (indices): width {idx_desc.get('width')!r} differs from bits {bits}; the file is damaged")
    indices = streams.decode_stream(idx_desc, idx, f"{at} (indices)")
    if indices.size != count or (indices.size and int(indices.max()) >= k):
        raise CheckpointError(f"{at} (indices): {indices.size} indices (largest {int(indices.max()) if indices.size else None}) "
                              f"for {count} kept weights and {k} centroids; the file is damaged")
    keep = torch.from_numpy(kept)
    values = torch.zeros(numel, dtype=dtype)
    values[keep] = codebook[torch.from_numpy(indices)]
    out = {entry["name"]: values.reshape(shape)}
    if mask_key is not None:
        out[mask_key] = keep.to(dtype).reshape(shape)
    return out
