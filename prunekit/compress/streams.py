"""Symbol streams of a Deep-Compression file: bit packing, entropy coders, and where the kept weights are.

A *stream* is a sequence of integer symbols of a fixed ``width`` (1..8 bits). :func:`encode_stream`
tries every coder in ``codecs`` and keeps the smallest result (ties: the earlier coder):

* ``"raw"``: the symbols bit-packed MSB-first at ``width`` bits;
* ``"huffman"``: canonical Huffman (:mod:`prunekit.compress.huffman`): the code lengths (up to the last
  symbol used; ``symbols`` in the descriptor says how many), one byte each, or two per byte (high
  nibble first) when every length is below 16 (``"lengths": 4`` in the descriptor), then the codes;
* ``"zlib"``, ``"lzma"``, ``"bz2"`` (Python's standard library) over the bit-packed bytes
  (form ``"packed"``) or, for ``width < 8``, over one byte per symbol (form ``"bytes"``).

Positions of the kept weights (:func:`encode_positions`) are either a bitmap (one bit per
weight) or *relative gaps* at ``w`` bits with Deep Compression's filler trick: the symbol
``2**w - 1`` advances by ``2**w - 1`` positions without a weight, every other symbol ``s``
advances by ``s + 1`` onto the next kept weight. Every candidate width and the bitmap are coded
and the smallest stream wins.
"""
from __future__ import annotations

import bz2
import lzma
import zlib
from typing import Dict, Iterable, Optional, Sequence, Tuple

import numpy as np

from ..errors import CheckpointError
from . import huffman

CODECS = ("raw", "huffman", "zlib", "lzma", "bz2")
STDLIB = ("zlib", "lzma", "bz2")
GAP_WIDTHS = (2, 3, 4, 5, 6, 7, 8)


def pack(symbols: np.ndarray, width: int) -> bytes:
    """Symbols (each < 2**width) bit-packed MSB-first, zero-padded to whole bytes."""
    s = np.asarray(symbols, dtype=np.uint8 if width <= 8 else np.int64).reshape(-1)
    if width == 8:
        return s.astype(np.uint8).tobytes()
    bits = np.unpackbits(s.astype(np.uint8)[:, None], axis=1)[:, 8 - width:]
    return np.packbits(bits.reshape(-1)).tobytes()


def unpack(data: bytes, width: int, count: int) -> np.ndarray:
    if len(data) != (count * width + 7) // 8:
        raise ValueError(f"{len(data)} bytes cannot hold exactly {count} symbols of {width} bits")
    raw = np.frombuffer(data, dtype=np.uint8)
    if width == 8:
        return raw.astype(np.int64)
    bits = np.unpackbits(raw)[: count * width].reshape(count, width)
    weights = (1 << np.arange(width - 1, -1, -1)).astype(np.int64)
    return bits.astype(np.int64) @ weights


def compress(codec: str, data: bytes) -> bytes:
    if codec == "zlib":
        return zlib.compress(data, 9)
    if codec == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_RAW, filters=[_lzma_filter(len(data), 9 | lzma.PRESET_EXTREME)])
    return bz2.compress(data, 9)


def _lzma_filter(size: int, preset: Optional[int] = None) -> dict:
    """LZMA2 with a dictionary just big enough for the stream (a preset's 64 MiB one costs time, saves nothing);
    the reader derives the same size from the stream's known length."""
    f = {"id": lzma.FILTER_LZMA2, "dict_size": min(1 << 26, max(1 << 12, 1 << max(size - 1, 1).bit_length()))}
    if preset is not None:
        f["preset"] = preset
    return f


def decompress(codec: str, data: bytes, size: int) -> bytes:
    """Exactly ``size`` bytes out of ``data`` (never more is inflated: no decompression bomb)."""
    if codec == "zlib":
        d = zlib.decompressobj()
        out = d.decompress(data, size)
        ok = d.eof and not d.unconsumed_tail and not d.unused_data
    elif codec == "lzma":
        d = lzma.LZMADecompressor(format=lzma.FORMAT_RAW, filters=[_lzma_filter(size)])
        out = d.decompress(data, max_length=size)
        ok = d.eof and not d.unused_data
    else:
        d = bz2.BZ2Decompressor()
        out = d.decompress(data, max_length=size)
        ok = d.eof and not d.unused_data
    if len(out) != size or not ok:
        raise ValueError(f"{codec} data does not inflate to exactly {size} bytes")
    return out


def candidates(symbols: np.ndarray, width: int, codecs: Iterable[str] = CODECS) -> Dict[Tuple[str, str], Tuple[dict, bytes]]:
    """``{(codec, form): (descriptor, payload)}`` for every coder of ``codecs`` (see the module doc)."""
    symbols = np.asarray(symbols, dtype=np.int64).reshape(-1)
    base = {"n": int(symbols.size), "width": int(width)}
    packed = pack(symbols, width)
    out: Dict[Tuple[str, str], Tuple[dict, bytes]] = {}
    for codec in codecs:
        if codec not in CODECS:
            raise ValueError(f"unknown stream codec {codec!r}; known: {', '.join(CODECS)}")
        if codec == "raw":
            out[(codec, "packed")] = ({**base, "codec": "raw"}, packed)
        elif codec == "huffman":
            lengths = huffman.code_lengths(np.bincount(symbols, minlength=1 << width))
            used = int(np.flatnonzero(lengths)[-1]) + 1 if lengths.any() else 0  # lengths up to the last used symbol
            desc = {**base, "codec": "huffman", "symbols": used}
            table = lengths[:used]
            if table.size and int(table.max()) < 16:  # two lengths per byte
                desc["lengths"] = 4
                table = pack(table, 4)
            else:
                table = bytes(table.tolist())
            out[(codec, "packed")] = (desc, table + huffman.encode(symbols, lengths))
        else:
            out[(codec, "packed")] = ({**base, "codec": codec, "form": "packed"}, compress(codec, packed))
            if width < 8:
                raw = symbols.astype(np.uint8).tobytes()
                out[(codec, "bytes")] = ({**base, "codec": codec, "form": "bytes"}, compress(codec, raw))
    return out


def cost(desc: dict, payload: bytes) -> int:
    """Bytes a stream costs: its payload plus what its descriptor adds to the header beyond a raw one."""
    return len(payload) + (8 if "form" in desc else 0)


def encode_stream(symbols: np.ndarray, width: int, codecs: Iterable[str] = CODECS,
                  sizes: Optional[dict] = None) -> Tuple[dict, bytes]:
    """``(descriptor, payload)`` of the smallest coder; ``sizes`` (if given) gets every candidate's payload bytes."""
    found = candidates(symbols, width, codecs)
    if sizes is not None:
        sizes.update({f"{c}/{f}": len(p) for (c, f), (_, p) in found.items()})
    best = min(found.values(), key=lambda dp: cost(*dp))  # min keeps the first of equal costs: a stable choice
    return best


def decode_stream(desc: dict, payload: bytes, where: str) -> np.ndarray:
    """The symbols of a stream (CheckpointError naming ``where`` on any inconsistency)."""
    try:
        n, width, codec = desc["n"], desc["width"], desc["codec"]
        if not (isinstance(n, int) and n >= 0 and isinstance(width, int) and 1 <= width <= 8):
            raise ValueError(f"bad symbol count {n!r} or width {width!r}")
        if codec == "raw":
            out = unpack(payload, width, n)
        elif codec == "huffman":
            used, lw = desc["symbols"], desc.get("lengths", 8)
            if lw not in (4, 8):
                raise ValueError(f"Huffman code lengths of {lw!r} bits")
            table = (used * lw + 7) // 8 if isinstance(used, int) else -1
            if not isinstance(used, int) or not 0 <= used <= 1 << width or table > len(payload):
                raise ValueError(f"{used!r} Huffman code lengths for an alphabet of {1 << width} in {len(payload)} bytes")
            lengths = np.zeros(1 << width, dtype=np.int64)
            lengths[:used] = unpack(payload[:table], lw, used)
            out = huffman.decode(payload[table:], lengths, n, where)
        elif codec in STDLIB:
            form = desc.get("form")
            if form == "packed":
                out = unpack(decompress(codec, payload, (n * width + 7) // 8), width, n)
            elif form == "bytes":
                out = np.frombuffer(decompress(codec, payload, n), dtype=np.uint8).astype(np.int64)
            else:
                raise ValueError(f"unknown form {form!r}")
        else:
            raise ValueError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")
    except CheckpointError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError, zlib.error, lzma.LZMAError, OSError, EOFError) as exc:
        raise CheckpointError(f"{where}: cannot decode ({type(exc).__name__}: {str(exc)[:200]}); the file is damaged") from None
    if out.size and int(out.max()) >= 1 << width:
        raise CheckpointError(f"{where}: holds a symbol out of range for {width} bits; the file is damaged")
    return out


# --- positions of the kept weights ---

def gap_symbols(positions: np.ndarray, width: int) -> np.ndarray:
    """Relative-gap symbols of increasing ``positions`` at ``width`` bits (filler ``2**width - 1``)."""
    p = np.asarray(positions, dtype=np.int64).reshape(-1)
    if p.size == 0:
        return np.zeros(0, dtype=np.int64)
    filler = (1 << width) - 1
    gaps = np.diff(np.concatenate([[-1], p]))
    fills = (gaps - 1) // filler
    rest = gaps - fills * filler  # 1..filler
    counts = fills + 1
    out = np.full(int(counts.sum()), filler, dtype=np.int64)
    out[np.cumsum(counts) - 1] = rest - 1
    return out


def positions_from_gaps(symbols: np.ndarray, width: int) -> np.ndarray:
    filler = (1 << width) - 1
    s = np.asarray(symbols, dtype=np.int64)
    is_fill = s == filler
    pos = np.cumsum(np.where(is_fill, filler, s + 1)) - 1
    if s.size and is_fill[-1]:
        raise ValueError("the gap stream ends with a filler")
    return pos[~is_fill]


def position_candidates(kept: np.ndarray, widths: Sequence[int] = GAP_WIDTHS,
                        codecs: Iterable[str] = CODECS) -> Dict[str, Tuple[dict, bytes]]:
    """``{"bitmap": ..., "gaps4": ...}``: the best-coded stream of every position scheme."""
    flat = np.asarray(kept, dtype=bool).reshape(-1)
    out = {"bitmap": _with({"scheme": "bitmap"}, encode_stream(np.packbits(flat), 8, codecs))}
    positions = np.flatnonzero(flat)
    for w in widths:
        out[f"gaps{w}"] = _with({"scheme": "gaps", "gap_width": int(w)}, encode_stream(gap_symbols(positions, w), w, codecs))
    return out


def encode_positions(kept: np.ndarray, widths: Sequence[int] = GAP_WIDTHS, codecs: Iterable[str] = CODECS,
                     sizes: Optional[dict] = None) -> Tuple[dict, bytes]:
    """The smaller of bitmap and relative gaps (over ``widths``), each with its best coder; ``sizes`` gets every scheme's cost."""
    found = position_candidates(kept, widths, codecs)
    if sizes is not None:
        sizes.update({k: cost(*v) for k, v in found.items()})
    return min(found.values(), key=lambda dp: cost(*dp))


def packed_position_bytes(kept: np.ndarray, widths: Sequence[int] = GAP_WIDTHS) -> int:
    """Bytes of the smaller of bitmap and bit-packed relative gaps, before any entropy coding."""
    flat = np.asarray(kept, dtype=bool).reshape(-1)
    positions = np.flatnonzero(flat)
    sizes = [(flat.size + 7) // 8] + [(gap_symbols(positions, w).size * w + 7) // 8 for w in widths]
    return min(sizes)


def decode_positions(desc: dict, payload: bytes, numel: int, count: int, where: str) -> np.ndarray:
    """Flat bool mask of the ``count`` kept positions among ``numel`` (CheckpointError on any inconsistency)."""
    scheme = desc.get("scheme") if isinstance(desc, dict) else None
    if scheme == "bitmap":
        sym = decode_stream(desc, payload, where)
        if sym.size != (numel + 7) // 8:
            raise CheckpointError(f"{where}: its bitmap has {sym.size} bytes, {numel} weights need {(numel + 7) // 8}")
        flat = np.unpackbits(sym.astype(np.uint8), count=numel).astype(bool)
    elif scheme == "gaps":
        width = desc.get("gap_width")
        if not isinstance(width, int) or not 1 <= width <= 8 or desc.get("width") != width:
            raise CheckpointError(f"{where}: bad gap width {width!r}; the file is damaged")
        try:
            pos = positions_from_gaps(decode_stream(desc, payload, where), width)
        except ValueError as exc:
            raise CheckpointError(f"{where}: {exc}; the file is damaged") from None
        if pos.size and int(pos[-1]) >= numel:
            raise CheckpointError(f"{where}: a kept position lies beyond the {numel} weights; the file is damaged")
        flat = np.zeros(numel, dtype=bool)
        flat[pos] = True
    else:
        raise CheckpointError(f"{where}: unknown position scheme {scheme!r}; the file is damaged")
    if int(flat.sum()) != count:
        raise CheckpointError(f"{where}: {int(flat.sum())} kept positions, the header says {count}; the file is damaged")
    return flat


def _with(extra: dict, found: Tuple[dict, bytes]) -> Tuple[dict, bytes]:
    return {**extra, **found[0]}, found[1]
