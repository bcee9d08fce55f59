"""1-D k-means against a hand-computed case; canonical Huffman against a textbook table and edge streams."""
import numpy as np
import pytest

from prunekit import CheckpointError
from prunekit.compress import huffman
from prunekit.compress.kmeans import kmeans_1d, linear_init


def test_kmeans_matches_hand_computed_lloyd_iterations():
    w = np.array([-1.0, -0.9, 0.1, 0.2, 1.0])
    # 2 bits -> 4 centroids, linear init between min and max
    c = np.array([-1.0, -1 / 3, 1 / 3, 1.0])
    assert np.allclose(linear_init(w, 4), c)
    # iteration 1: nearest centroids -> {-1, -0.9} {} {0.1, 0.2} {1.0}; the empty cluster keeps its centroid
    c = np.array([(-1.0 - 0.9) / 2, -1 / 3, (0.1 + 0.2) / 2, 1.0])
    # iteration 2: midpoints -0.642, -0.092, 0.575 give the same assignment: converged
    centroids, labels = kmeans_1d(w, 4)
    assert np.allclose(centroids, c, atol=1e-12, rtol=0)
    assert labels.tolist() == [0, 0, 2, 2, 3]


def test_kmeans_two_clusters_and_edge_cases():
    w = np.array([0.0, 1.0, 2.0, 10.0, 11.0, 12.0])
    c, lab = kmeans_1d(w, 2)
    assert np.allclose(c, [1.0, 11.0]) and lab.tolist() == [0, 0, 0, 1, 1, 1]
    c, lab = kmeans_1d(np.array([3.0, 1.0, 3.0]), 4)  # fewer distinct values than centroids: exact
    assert c.tolist() == [1.0, 3.0] and lab.tolist() == [1, 0, 1]
    c, lab = kmeans_1d(np.zeros(0), 4)
    assert c.size == 0 and lab.size == 0
    rng = np.random.default_rng(0)
    x = rng.normal(size=5000)
    a, b = kmeans_1d(x, 32), kmeans_1d(x.copy(), 32)
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])  # deterministic
    assert np.all(np.diff(a[0]) > 0)
    # every value is assigned to its nearest centroid
    assert np.array_equal(a[1], np.abs(x[:, None] - a[0][None, :]).argmin(axis=1))


def test_huffman_lengths_equal_the_textbook_table():
    # CLRS 16.3: a:45 b:13 c:12 d:16 e:9 f:5 -> a 0, b 101, c 100, d 111, e 1101, f 1100
    lengths = huffman.code_lengths([45, 13, 12, 16, 9, 5])
    assert lengths.tolist() == [1, 3, 3, 3, 4, 4]
    assert huffman.encoded_bits([45, 13, 12, 16, 9, 5], lengths) == 224  # the textbook's 224 bits per 100 characters
    codes = huffman.canonical_codes(lengths)
    words = [format(int(c), f"0{int(n)}b") for c, n in zip(codes, lengths)]
    assert words == ["0", "100", "101", "110", "1110", "1111"]  # canonical: (length, symbol) order
    assert not any(a != b and b.startswith(a) for a in words for b in words)  # prefix-free


def round_trip(symbols, alphabet):
    symbols = np.asarray(symbols, dtype=np.int64)
    lengths = huffman.code_lengths(np.bincount(symbols, minlength=alphabet))
    data = huffman.encode(symbols, lengths)
    back = huffman.decode(data, lengths, symbols.size)
    assert np.array_equal(back, symbols)
    return lengths, data


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_huffman_round_trips_random_streams(seed):
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.ones(32) * 0.3)
    round_trip(rng.choice(32, size=20000, p=probs), 32)
    round_trip(rng.integers(0, 256, size=3000), 256)


def test_huffman_edge_streams():
    lengths, data = round_trip([7] * 100, 16)  # one symbol: a 1-bit code
    assert lengths.tolist() == [0] * 7 + [1] + [0] * 8 and len(data) == 13
    lengths, _ = round_trip(np.arange(256), 256)  # all distinct, equal counts: 8 bits each
    assert set(lengths.tolist()) == {8}
    lengths, _ = round_trip(np.arange(100), 128)  # all distinct, not a power of two: 6 or 7 bits
    assert set(lengths[:100].tolist()) == {6, 7} and not lengths[100:].any()
    lengths, data = round_trip([], 8)  # empty
    assert data == b"" and not lengths.any()
    assert huffman.code_lengths([3, 3, 3, 3]).tolist() == huffman.code_lengths([3, 3, 3, 3]).tolist() == [2, 2, 2, 2]


def test_huffman_long_codes_decode_bit_by_bit():
    fib = [1, 1]
    while len(fib) < 26:
        fib.append(fib[-1] + fib[-2])
    counts = np.array(fib)  # Fibonacci counts give the deepest tree: codes of 1..25 bits
    lengths = huffman.code_lengths(counts)
    assert int(lengths.max()) == 25 > huffman.MAX_TABLE_BITS
    rng = np.random.default_rng(0)
    symbols = rng.permutation(np.repeat(np.arange(26), counts))[:4000]
    data = huffman.encode(symbols, lengths)
    assert np.array_equal(huffman.decode(data, lengths, symbols.size), symbols)


def test_huffman_refuses_damaged_streams():
    symbols = np.array([0, 1, 2, 3] * 10)
    lengths = huffman.code_lengths(np.bincount(symbols))
    data = huffman.encode(symbols, lengths)
    with pytest.raises(CheckpointError, match="end before"):
        huffman.decode(data[:-2], lengths, symbols.size)
    with pytest.raises(CheckpointError, match="Kraft"):
        huffman.decode(data, [1, 1, 1, 1], symbols.size)
    with pytest.raises(CheckpointError, match="no valid code"):
        huffman.decode(b"\xff", [1, 2, 0, 0], 4)  # incomplete code: 11 is no code
