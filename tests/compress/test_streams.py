"""Bit packing, every stream codec, relative gaps with fillers, and the bitmap-or-gaps choice."""
import numpy as np
import pytest

from prunekit import CheckpointError
from prunekit.compress import streams


@pytest.mark.parametrize("width", [1, 3, 5, 8])
def test_pack_round_trip(width):
    s = np.random.default_rng(width).integers(0, 1 << width, size=1001)
    data = streams.pack(s, width)
    assert len(data) == (1001 * width + 7) // 8
    assert np.array_equal(streams.unpack(data, width, 1001), s)


@pytest.mark.parametrize("codec", streams.CODECS)
def test_every_codec_round_trips(codec):
    rng = np.random.default_rng(0)
    s = rng.choice(32, size=5000, p=rng.dirichlet(np.ones(32)))
    for (c, form), (desc, payload) in streams.candidates(s, 5, [codec]).items():
        assert c == codec
        assert np.array_equal(streams.decode_stream(desc, payload, "test"), s), form
    for desc, payload in streams.candidates(np.zeros(0, dtype=np.int64), 5, [codec]).values():
        assert streams.decode_stream(desc, payload, "test").size == 0


def test_encode_stream_keeps_the_smallest():
    s = np.zeros(4000, dtype=np.int64)
    s[::97] = 3
    sizes = {}
    desc, payload = streams.encode_stream(s, 5, sizes=sizes)
    assert streams.cost(desc, payload) == min(streams.cost(*v) for v in streams.candidates(s, 5).values())
    assert set(sizes) >= {"raw/packed", "huffman/packed", "zlib/packed", "lzma/bytes", "bz2/packed"}


def test_gaps_with_fillers_by_hand():
    # positions 0 and 20 at 3 bits: gap 1 -> symbol 0; gap 20 -> two fillers (7 + 7) then 6 -> symbol 5
    assert streams.gap_symbols([0, 20], 3).tolist() == [0, 7, 7, 5]
    assert streams.positions_from_gaps(np.array([0, 7, 7, 5]), 3).tolist() == [0, 20]
    assert streams.gap_symbols([6], 3).tolist() == [6]  # gap 7 = the largest plain step
    assert streams.gap_symbols([7], 3).tolist() == [7, 0]  # gap 8 needs a filler
    rng = np.random.default_rng(0)
    pos = np.sort(rng.choice(100000, size=700, replace=False))
    for w in range(1, 9):
        assert np.array_equal(streams.positions_from_gaps(streams.gap_symbols(pos, w), w), pos)


def test_positions_choose_the_smaller_of_bitmap_and_gaps():
    rng = np.random.default_rng(0)
    dense_ish = rng.random(20000) < 0.5  # half kept: a bitmap beats any gap code
    sparse = rng.random(20000) < 0.01  # 1% kept: gaps beat the bitmap
    for kept, want in ((dense_ish, "bitmap"), (sparse, "gaps")):
        sizes = {}
        desc, payload = streams.encode_positions(kept, sizes=sizes)
        assert desc["scheme"] == want
        assert streams.cost(desc, payload) == min(sizes.values())
        back = streams.decode_positions(desc, payload, kept.size, int(kept.sum()), "test")
        assert np.array_equal(back, kept)
    assert streams.packed_position_bytes(dense_ish) == (20000 + 7) // 8


def test_damaged_streams_are_refused():
    kept = np.random.default_rng(1).random(5000) < 0.05
    desc, payload = streams.encode_positions(kept)
    with pytest.raises(CheckpointError, match="kept positions"):
        streams.decode_positions(desc, payload, kept.size, int(kept.sum()) + 1, "w")
    with pytest.raises(CheckpointError):
        streams.decode_positions(desc, payload, 10, int(kept.sum()), "w")  # positions beyond the tensor
    with pytest.raises(CheckpointError, match="unknown position scheme"):
        streams.decode_positions({**desc, "scheme": "magic"}, payload, kept.size, int(kept.sum()), "w")
    for codec in ("zlib", "lzma", "bz2"):
        d, p = streams.candidates(np.arange(200) % 32, 5, [codec])[(codec, "packed")]
        with pytest.raises(CheckpointError, match="cannot decode"):
            streams.decode_stream(d, p[:-3], "w")
        with pytest.raises(CheckpointError, match="cannot decode"):
            streams.decode_stream({**d, "n": d["n"] * 100}, p, "w")  # never inflates more than the header says
    with pytest.raises(CheckpointError, match="unknown codec"):
        streams.decode_stream({"n": 1, "width": 8, "codec": "pickle"}, b"x", "w")


def test_huffman_code_lengths_two_per_byte():
    rng = np.random.default_rng(1)
    s = rng.choice(64, size=3000, p=rng.dirichlet(np.ones(64)))
    (desc, payload), = streams.candidates(s, 6, ["huffman"]).values()
    assert desc["lengths"] == 4  # every length < 16: 32 bytes of table, not 64
    assert np.array_equal(streams.decode_stream(desc, payload, "test"), s)
    with pytest.raises(CheckpointError, match="cannot decode"):
        streams.decode_stream({**desc, "lengths": 5}, payload, "test")
    old = {k: v for k, v in desc.items() if k != "lengths"}  # a byte per length (version 1 files)
    table = bytes(streams.unpack(payload[:32], 4, 64).tolist())
    assert np.array_equal(streams.decode_stream(old, table + payload[32:], "test"), s)
