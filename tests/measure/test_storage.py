"""The sparse storage format round-trips bit-exactly and is smaller than dense storage when weights are sparse."""
import pytest
import torch
from safetensors.torch import load, save

from prunekit.errors import CheckpointError
from prunekit.measure import from_sparse_state, to_sparse_state
from prunekit.measure.storage import decode_state, dense_nbytes, encode_state, sparse_nbytes
from bits import same_bits


def sparse_tensor(shape, sparsity, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g).to(dtype)
    keep = torch.rand(*shape, generator=g) >= sparsity
    return torch.where(keep, t, torch.zeros((), dtype=dtype))




def test_round_trip_is_bit_exact_through_safetensors():
    torch.manual_seed(0)
    w = sparse_tensor((16, 8, 3, 3), 0.9)
    w[0, 0, 0, :] = torch.tensor([-0.0, float("nan"), float("inf")])  # signed zero, NaN, inf survive
    sd = {
        "conv.weight": w,
        "fc.weight": sparse_tensor((10, 20), 0.7, torch.float16),
        "fc.bias": torch.randn(10),  # dense
        "emb.weight": sparse_tensor((50, 4), 0.8, torch.bfloat16),
        "bn.num_batches_tracked": torch.tensor(3),  # 0-dim
        "ids": torch.tensor([0, 0, 0, 7, 0, 0, 0, 0, 0] * 20, dtype=torch.int64),
        "flags": torch.tensor([False, True, False, False, False] * 40),
        "small": torch.tensor([0.0, 0.0, 1.0]),  # too small to be worth encoding
        "empty": torch.zeros(0, 3),
    }
    encoded = load(save(to_sparse_state(sd)))
    assert {"ids::bitmap", "flags::bitmap", "conv.weight::negzero", "small"} <= set(encoded)
    restored = from_sparse_state(encoded)
    assert sorted(restored) == sorted(sd)
    for k in sd:
        assert same_bits(restored[k], sd[k]), k


def test_sparse_tensors_are_bitmap_plus_values_dense_ones_unchanged():
    sd = {"a": sparse_tensor((200,), 0.8), "b": sparse_tensor((200,), 0.2)}
    enc = to_sparse_state(sd)
    nnz = int((sd["a"] != 0).sum())
    assert set(enc) == {"a::bitmap", "a::values", "a::shape", "b"}
    assert enc["a::bitmap"].dtype == torch.uint8 and enc["a::bitmap"].numel() == 25  # 200 bits
    assert torch.equal(enc["a::values"], sd["a"][sd["a"] != 0]) and enc["a::values"].numel() == nnz
    assert enc["a::shape"].tolist() == [200]
    assert torch.equal(enc["b"], sd["b"])


def test_sparse_bytes_smaller_at_80_percent_and_about_equal_when_dense():
    sparse_sd = {"w": sparse_tensor((256, 256), 0.8)}
    dense_sd = {"w": sparse_tensor((256, 256), 0.0)}
    raw = 256 * 256 * 4
    # 80% zeros: 1 bit per entry + 20% of the values, plus small headers
    assert sparse_nbytes(sparse_sd) < 0.35 * dense_nbytes(sparse_sd)
    assert abs(sparse_nbytes(sparse_sd) - (raw // 32 + 0.2 * raw)) < 0.02 * raw
    assert abs(sparse_nbytes(dense_sd) - dense_nbytes(dense_sd)) <= 64
    assert dense_nbytes(dense_sd) >= raw


def test_truncated_sparse_state_is_a_checkpoint_error():
    enc = to_sparse_state({"w": sparse_tensor((640,), 0.9)})
    del enc["w::values"]
    with pytest.raises(CheckpointError, match="w"):
        from_sparse_state(enc)


def masked_state(shape=(32, 16), sparsity=0.8, seed=1):
    g = torch.Generator().manual_seed(seed)
    orig = torch.randn(*shape, generator=g)
    mask = (torch.rand(*shape, generator=g) >= sparsity).float()
    return orig, mask


def test_checkpoint_encoding_of_masks_is_compact_and_exact():
    orig, mask = masked_state()
    kept_zero, mask2 = masked_state(seed=2)
    kept_zero[mask2.nonzero()[0].tolist()[0], mask2.nonzero()[0].tolist()[1]] = 0.0  # a kept weight that is zero
    soft = torch.full((4, 4), 0.5)
    shared = torch.randn(8, 8)
    sd = {"a.weight_orig": orig, "a.weight_mask": mask, "b.weight_orig": kept_zero, "b.weight_mask": mask2,
          "c.weight_orig": torch.randn(4, 4), "c.weight_mask": soft, "emb": shared, "head": shared, "n": torch.tensor(7)}
    for sparse in (False, True):
        enc, aliases = encode_state(sd, sparse=sparse)
        assert aliases == {"head": "emb"}
        assert enc["a.weight_mask::nonzero"].numel() == 0  # mask == (stored weight != 0): nothing else to store
        assert enc["b.weight_mask::maskbits"].dtype == torch.uint8 and enc["b.weight_mask::maskbits"].numel() == 64
        assert same_bits(enc["c.weight_mask"], soft) and not any(k.startswith("head") for k in enc)
        dec = decode_state(load(save(enc)), sparse=sparse, aliases=aliases)
        assert sorted(dec) == sorted(sd)
        for name in ("a", "b", "c"):
            o, m = sd[f"{name}.weight_orig"], sd[f"{name}.weight_mask"]
            assert same_bits(dec[f"{name}.weight_mask"], m)
            assert same_bits(dec[f"{name}.weight_orig"], torch.where(m != 0, o, torch.zeros(())))  # +0.0 where pruned
            assert torch.equal(dec[f"{name}.weight_orig"] * dec[f"{name}.weight_mask"], o * m)
        assert same_bits(dec["head"], shared) and same_bits(dec["n"], sd["n"])


def test_dense_nbytes_counts_masks_as_saved_not_as_float32():
    orig, mask = masked_state((256, 256))
    masked = {"w_orig": orig, "w_mask": mask}
    effective = {"w": torch.where(mask != 0, orig, torch.zeros(()))}  # +0.0 where pruned, as effective_state_dict
    raw = 256 * 256 * 4
    assert dense_nbytes(masked) - dense_nbytes(effective) < 200  # an empty marker, not a second float32 tensor
    assert len(save({k: v.contiguous() for k, v in masked.items()})) > 2 * raw
    assert abs(sparse_nbytes(masked) - sparse_nbytes(effective)) < 200


@pytest.mark.parametrize("damage,words", [
    (lambda e: e.update({"w_mask::maskbits": e["w_mask::maskbits"][:-1]}), ("w_mask", "bitmap")),
    (lambda e: e.pop("w_orig"), ("w_mask", "w_orig", "missing")),
    (lambda e: e.update({"x::maskbits": torch.zeros(1, dtype=torch.uint8)}), ("x", "_mask")),
])
def test_damaged_mask_encoding_is_a_checkpoint_error(damage, words):
    orig, mask = masked_state((10, 10))
    orig[mask.nonzero()[0].tolist()[0], mask.nonzero()[0].tolist()[1]] = 0.0  # force the bitmap form
    enc, _ = encode_state({"w_orig": orig, "w_mask": mask})
    assert "w_mask::maskbits" in enc
    damage(enc)
    with pytest.raises(CheckpointError) as excinfo:
        decode_state(enc)
    for word in words:
        assert word in str(excinfo.value)
