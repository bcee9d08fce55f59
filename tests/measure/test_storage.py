"""The sparse storage format round-trips bit-exactly and is smaller than dense storage when weights are sparse."""
import pytest
import torch
from safetensors.torch import load, save

from prunekit.errors import CheckpointError
from prunekit.measure import from_sparse_state, to_sparse_state
from prunekit.measure.storage import dense_nbytes, sparse_nbytes


def sparse_tensor(shape, sparsity, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randn(*shape, generator=g).to(dtype)
    keep = torch.rand(*shape, generator=g) >= sparsity
    return torch.where(keep, t, torch.zeros((), dtype=dtype))


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.is_floating_point():
        view = {2: torch.int16, 4: torch.int32, 8: torch.int64}[a.element_size()]
        return torch.equal(a.contiguous().view(view), b.contiguous().view(view))
    return torch.equal(a, b)


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
