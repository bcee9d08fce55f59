"""Canonical Huffman coding of integer symbol streams (numpy in, bytes out), deterministic.

* :func:`code_lengths` builds the Huffman tree with a fixed tie-break (lower count first, then
  the lower smallest symbol of the subtree), so the same counts always give the same lengths.
  A stream with one distinct symbol gets a 1-bit code; an empty stream gets no code at all.
* The codes are *canonical*: only the length of each symbol's code is stored, and codes are
  assigned in (length, symbol) order, as in DEFLATE.
* :func:`encode` packs the codes MSB-first into bytes (the last byte padded with zero bits);
  :func:`decode` reads exactly ``count`` symbols back and refuses a stream that does not hold them.
"""
from __future__ import annotations

import heapq
from typing import List, Sequence, Tuple

import numpy as np

from ..errors import CheckpointError

MAX_TABLE_BITS = 20  # codes up to this long decode through a lookup table; longer ones bit by bit
MAX_CODE_BITS = 63  # a stored length above this is refused (Huffman lengths of real streams are far shorter)


def code_lengths(counts: Sequence[int]) -> np.ndarray:
    """Huffman code length of every symbol ``0..len(counts)-1`` (0 for symbols that do not occur)."""
    counts = np.asarray(counts, dtype=np.int64).reshape(-1)
    lengths = np.zeros(counts.size, dtype=np.int64)
    present = [int(s) for s in np.flatnonzero(counts > 0)]
    if not present:
        return lengths
    if len(present) == 1:
        lengths[present[0]] = 1
        return lengths
    # heap items: (count, smallest symbol in the subtree, node id); leaves are ids 0..n-1
    parent: List[int] = [-1] * len(present)
    heap = [(int(counts[s]), s, i) for i, s in enumerate(present)]
    heapq.heapify(heap)
    while len(heap) > 1:
        c1, s1, a = heapq.heappop(heap)
        c2, s2, b = heapq.heappop(heap)
        node = len(parent)
        parent.append(-1)
        parent[a] = parent[b] = node
        heapq.heappush(heap, (c1 + c2, min(s1, s2), node))
    depth = [0] * len(parent)
    for node in range(len(parent) - 2, -1, -1):  # parents are created after their children: walk top-down
        depth[node] = depth[parent[node]] + 1
    for i, s in enumerate(present):
        lengths[s] = depth[i]
    return lengths


def canonical_codes(lengths: Sequence[int]) -> np.ndarray:
    """The canonical code (as an integer, read MSB-first over its length) of every symbol with a length > 0."""
    lengths = np.asarray(lengths, dtype=np.int64).reshape(-1)
    codes = np.zeros(lengths.size, dtype=np.int64)
    code, prev = 0, 0
    for s in sorted(np.flatnonzero(lengths > 0).tolist(), key=lambda s: (int(lengths[s]), s)):
        ln = int(lengths[s])
        code <<= ln - prev
        codes[s] = code
        code += 1
        prev = ln
    return codes


def check_lengths(lengths: Sequence[int], where: str = "huffman stream") -> np.ndarray:
    """Lengths as an int64 array, refusing negative / too long ones and codes that break Kraft's inequality."""
    arr = np.asarray(lengths, dtype=np.int64).reshape(-1)
    if arr.size and (arr.min() < 0 or arr.max() > MAX_CODE_BITS):
        raise CheckpointError(f"{where}: Huffman code lengths must be 0..{MAX_CODE_BITS}, got {int(arr.min())}..{int(arr.max())}")
    used = arr[arr > 0]
    if used.size:
        top = int(used.max())
        if sum(1 << (top - int(ln)) for ln in used.tolist()) > (1 << top):
            raise CheckpointError(f"{where}: its Huffman code lengths do not form a prefix code (Kraft sum > 1)")
    return arr


def encode(symbols: np.ndarray, lengths: Sequence[int]) -> bytes:
    """The symbols' canonical codes packed MSB-first (zero-padded to whole bytes)."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    if symbols.size == 0:
        return b""
    lengths = np.asarray(lengths, dtype=np.int64)
    codes = canonical_codes(lengths)
    if int(lengths[symbols].min()) == 0:
        raise ValueError("a symbol of the stream has no Huffman code")
    top = int(lengths.max())
    chunks = []
    step = max(1, (1 << 22) // max(top, 1))
    for start in range(0, symbols.size, step):
        s = symbols[start:start + step]
        ln, cd = lengths[s], codes[s]
        j = np.arange(top)
        shift = ln[:, None] - 1 - j[None, :]  # bit j of a code, MSB first; j >= length are dropped
        bits = (cd[:, None] >> np.maximum(shift, 0)) & 1
        chunks.append(bits[shift >= 0].astype(np.uint8))
    return np.packbits(np.concatenate(chunks)).tobytes()


def encoded_bits(counts: Sequence[int], lengths: Sequence[int]) -> int:
    return int(np.dot(np.asarray(counts, dtype=np.int64), np.asarray(lengths, dtype=np.int64)))


def decode(data: bytes, lengths: Sequence[int], count: int, where: str = "huffman stream") -> np.ndarray:
    """``count`` symbols read from ``data`` (CheckpointError if the bits run out or hit no code)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    lengths = check_lengths(lengths, where)
    if not (lengths > 0).any():
        raise CheckpointError(f"{where}: it holds {count} symbols but no Huffman code")
    bits = np.unpackbits(np.frombuffer(data, dtype=np.uint8))
    top = int(lengths.max())
    if top <= MAX_TABLE_BITS:
        out = _decode_table(bits, lengths, top, count)
    else:
        out = _decode_bitwise(bits, lengths, count)
    if out is None:
        raise CheckpointError(f"{where}: its bits end before its {count} symbols do, or hold no valid code; it is damaged")
    return out


def _decode_table(bits: np.ndarray, lengths: np.ndarray, top: int, count: int):
    codes = canonical_codes(lengths)
    table_sym = np.full(1 << top, -1, dtype=np.int64)
    table_len = np.zeros(1 << top, dtype=np.int64)
    for s in np.flatnonzero(lengths > 0).tolist():
        ln = int(lengths[s])
        lo = int(codes[s]) << (top - ln)
        hi = (int(codes[s]) + 1) << (top - ln)
        table_sym[lo:hi] = s
        table_len[lo:hi] = ln
    nbits = bits.size
    padded = np.concatenate([bits.astype(np.int64), np.zeros(top, dtype=np.int64)])
    window = np.zeros(nbits, dtype=np.int64)
    for j in range(top):
        window = (window << 1) | padded[j:j + nbits]
    win, tsym, tlen = window.tolist(), table_sym.tolist(), table_len.tolist()
    out = [0] * count
    p = 0
    for i in range(count):
        if p >= nbits:
            return None
        v = win[p]
        s = tsym[v]
        if s < 0:
            return None
        out[i] = s
        p += tlen[v]
    if p > nbits:
        return None
    return np.asarray(out, dtype=np.int64)


def _decode_bitwise(bits: np.ndarray, lengths: np.ndarray, count: int):
    codes = canonical_codes(lengths)
    lookup = {(int(lengths[s]), int(codes[s])): s for s in np.flatnonzero(lengths > 0).tolist()}
    top = int(lengths.max())
    b = bits.tolist()
    out, p = [], 0
    for _ in range(count):
        code, ln = 0, 0
        while True:
            if p >= len(b) or ln >= top:
                return None
            code = (code << 1) | b[p]
            p += 1
            ln += 1
            s = lookup.get((ln, code))
            if s is not None:
                out.append(s)
                break
    return np.asarray(out, dtype=np.int64)


__all__: Tuple[str, ...] = ("code_lengths", "canonical_codes", "encode", "decode", "check_lengths")
