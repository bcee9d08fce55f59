"""Checkpoints: bit-exact round trips (dense, sparse, torch file), masks restored, corrupt/mismatched files refused."""
import pytest
import torch
from torch import nn

import prunekit
from prunekit.unstructured import get_masks


def net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


X = torch.randn(2, 1, 6, 6)


@pytest.mark.parametrize("suffix,sparse", [(".safetensors", False), (".safetensors", True), (".pt", False)])
def test_round_trip_bit_exact(tmp_path, suffix, sparse):
    model = prunekit.prune(net(), X, ratio=0.8).eval()
    path = prunekit.save(model, tmp_path / f"m{suffix}", sparse=sparse)
    loaded = prunekit.load(path, net())
    assert torch.equal(model(X), loaded(X))
    for k, m in get_masks(model).items():
        assert torch.equal(get_masks(loaded)[k], m)
    ref = {k: v for k, v in model.state_dict().items()}
    for k, v in loaded.state_dict().items():
        if sparse and k.endswith("_orig"):  # sparse storage keeps effective weights under the mask
            mask = ref[k.replace("_orig", "_mask")]
            assert torch.equal(v, torch.where(mask != 0, ref[k], torch.zeros(())))
        else:
            assert torch.equal(v, ref[k])


def test_sparse_file_is_smaller(tmp_path):
    model = prunekit.finalize(prunekit.prune(nn.Sequential(nn.Linear(256, 256)), None, ratio=0.9))
    dense = prunekit.save(model, tmp_path / "d.safetensors").stat().st_size
    sparse = prunekit.save(model, tmp_path / "s.safetensors", sparse=True).stat().st_size
    assert sparse < 0.4 * dense


def test_load_rebuilds_registered_architecture(tmp_path):
    model = prunekit.models.create_model("digits_cnn")
    path = prunekit.save(model, tmp_path / "c.safetensors", model_spec={"name": "digits_cnn", "kwargs": {}})
    loaded = prunekit.load(path)
    x = torch.randn(3, 1, 8, 8)
    assert torch.equal(model.eval()(x), loaded(x))


def test_truncated_file_raises(tmp_path):
    path = prunekit.save(net(), tmp_path / "m.safetensors")
    data = path.read_bytes()
    for cut in (10, len(data) // 2, len(data) - 3):
        bad = tmp_path / f"cut{cut}.safetensors"
        bad.write_bytes(data[:cut])
        with pytest.raises(prunekit.CheckpointError, match="truncated, corrupt"):
            prunekit.load(bad, net())
    garbage = tmp_path / "g.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(prunekit.CheckpointError):
        prunekit.load(garbage, net())


def test_shape_mismatch_names_keys_and_leaves_model_untouched(tmp_path):
    path = prunekit.save(net(), tmp_path / "m.safetensors")
    other = nn.Sequential(nn.Conv2d(1, 6, 3), nn.BatchNorm2d(6), nn.ReLU(), nn.Flatten(), nn.Linear(6 * 4 * 4, 5))
    before = {k: v.clone() for k, v in other.state_dict().items()}
    with pytest.raises(prunekit.CheckpointError, match=r"0\.weight: checkpoint \(4, 1, 3, 3\) vs model \(6, 1, 3, 3\)"):
        prunekit.load(path, other)
    assert all(torch.equal(v, before[k]) for k, v in other.state_dict().items())


def test_pickle_payload_not_executed(tmp_path):
    import pickle

    class Boom:
        def __reduce__(self):
            return (exec, ("raise SystemExit('pickle executed')",))

    path = tmp_path / "evil.pt"
    with open(path, "wb") as f:
        pickle.dump({"w": Boom()}, f)
    with pytest.raises(prunekit.CheckpointError):
        prunekit.load(path, net())


def test_missing_architecture(tmp_path):
    path = prunekit.save(net(), tmp_path / "m.safetensors")
    with pytest.raises(prunekit.CheckpointError, match="pass model="):
        prunekit.load(path)
