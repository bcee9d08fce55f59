"""Checkpoints: exact round trips (dense, sparse, torch file), masks restored, honest sizes, module versions, file modes."""
import json
import os
import struct

import pytest
import torch
from torch import nn

import prunekit
from prunekit.measure import effective_state_dict
from prunekit.measure.storage import checkpoint_nbytes, dense_nbytes, sparse_nbytes
from prunekit.unstructured import get_masks
from bits import same_bits


def net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


X = torch.randn(2, 1, 6, 6)
VARIANTS = [(".safetensors", False), (".safetensors", True), (".pt", False), (".pt", True)]




@pytest.mark.parametrize("suffix,sparse", VARIANTS)
def test_round_trip_exact(tmp_path, suffix, sparse):
    model = prunekit.prune(net(), X, ratio=0.8).eval()
    path = prunekit.save(model, tmp_path / f"m{suffix}", sparse=sparse)
    loaded = prunekit.load(path, net())
    assert torch.equal(model(X), loaded(X))
    masks = get_masks(model)
    assert masks and all(torch.equal(get_masks(loaded)[k], m) for k, m in masks.items())
    ref = model.state_dict()
    for k, v in loaded.state_dict().items():
        if k.endswith("_orig"):  # stored as the effective weight: +0.0 where pruned, the exact value where kept
            mask = ref[k.replace("_orig", "_mask")]
            assert same_bits(v, torch.where(mask != 0, ref[k], torch.zeros(())))
        else:
            assert same_bits(v, ref[k]), k
    eff_loaded, eff_ref = effective_state_dict(loaded), effective_state_dict(model)
    assert all(same_bits(eff_loaded[k], eff_ref[k]) for k in eff_ref)


@pytest.mark.parametrize("suffix,sparse", VARIANTS)
def test_kept_zero_weights_and_soft_masks_round_trip(tmp_path, suffix, sparse):
    model = prunekit.prune(net(), X, ratio=0.5)
    with torch.no_grad():  # a kept weight that is exactly zero: the mask is no longer "weight != 0", so bits are stored
        keep = model[0].weight_mask.nonzero()[0]
        model[0].weight_orig[tuple(keep)] = 0.0
    soft = torch.rand(5, 64).round() * 0.5  # not a 0/1 mask: stored as it is
    model[4].weight_mask.copy_(soft)
    path = prunekit.save(model, tmp_path / f"m{suffix}", sparse=sparse)
    state, meta = prunekit.io.read_checkpoint(path)
    assert torch.equal(state["0.weight_mask"], model[0].weight_mask)
    assert same_bits(state["4.weight_mask"], soft)
    loaded = prunekit.load(path, net())
    assert torch.equal(loaded.eval()(X), model.eval()(X))


def test_dense_file_is_the_effective_model_size(tmp_path):
    """80% masked: the dense file is about the model's dense size (no second float32 copy for the mask)."""
    model = prunekit.prune(nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10)), None, ratio=0.8)
    effective = dense_nbytes(effective_state_dict(model))
    assert effective >= (256 * 256 + 256 + 2570) * 4
    dense = prunekit.save(model, tmp_path / "d.safetensors").stat().st_size
    sparse = prunekit.save(model, tmp_path / "s.safetensors", sparse=True).stat().st_size
    assert 0 < dense - effective < 2048  # the JSON metadata (spec, masks, checksums) and two empty mask markers
    assert sparse < 0.3 * dense
    assert 0 < sparse - sparse_nbytes(effective_state_dict(model)) < 2048


@pytest.mark.parametrize("sparse", [False, True])
def test_checkpoint_nbytes_is_the_file_minus_its_json_header(tmp_path, sparse):
    model = prunekit.prune(net(), X, ratio=0.7)
    path = prunekit.save(model, tmp_path / "m.safetensors", sparse=sparse)
    data = path.read_bytes()
    header = json.loads(data[8: 8 + struct.unpack("<Q", data[:8])[0]])
    ours = len(json.dumps(header["__metadata__"], separators=(",", ":"))) + len(',"__metadata__":')
    assert abs(len(data) - checkpoint_nbytes(model, sparse=sparse) - ours) < 8  # safetensors pads headers to 8 bytes
    assert checkpoint_nbytes(model, sparse=sparse) == (sparse_nbytes if sparse else dense_nbytes)(model.state_dict())


def test_tied_weights_are_stored_once_and_stay_tied(tmp_path):
    def tied():
        torch.manual_seed(1)
        m = nn.Sequential(nn.Embedding(50, 16), nn.Linear(16, 50, bias=False))
        m[1].weight = m[0].weight
        return m

    model = tied()
    path = prunekit.save(model, tmp_path / "t.safetensors")
    assert path.stat().st_size < 50 * 16 * 4 * 1.5
    loaded = prunekit.load(path, tied())
    assert loaded[0].weight is loaded[1].weight and torch.equal(loaded[0].weight, model[0].weight)


class Versioned(nn.Module):
    """Like torchvision's MNASNet: refuses state dicts that lack its version (``_metadata``)."""

    _version = 2

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(3, 2)
        self.seen_versions = []

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, *args, **kwargs):
        version = local_metadata.get("version")
        if version is None:
            raise RuntimeError("state dict without version: refusing to guess its layout")
        self.seen_versions.append(version)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, *args, **kwargs)

    def forward(self, x):
        return self.fc(x)


@pytest.mark.parametrize("suffix,sparse", VARIANTS)
def test_state_dict_versions_survive(tmp_path, suffix, sparse):
    outer = nn.Sequential(Versioned(), nn.BatchNorm1d(2))
    path = prunekit.save(outer, tmp_path / f"v{suffix}", sparse=sparse)
    state, _ = prunekit.io.read_checkpoint(path)
    assert state._metadata["0"]["version"] == 2 and state._metadata["1"]["version"] == 2
    loaded = prunekit.load(path, nn.Sequential(Versioned(), nn.BatchNorm1d(2)))
    assert loaded[0].seen_versions == [2]
    x = torch.randn(4, 3)
    assert torch.equal(loaded(x), outer.eval()(x))


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_new_files_get_the_umask_mode(tmp_path, umask, suffix):
    old = os.umask(umask)
    try:
        path = prunekit.save(net(), tmp_path / f"m{suffix}")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


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


def test_plain_state_dict_file_loads_with_a_warning(tmp_path, caplog):
    model = net()
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    with caplog.at_level("WARNING", logger="prunekit.io.checkpoint"):
        loaded = prunekit.load(tmp_path / "plain.pt", net())
    assert "without checksums" in caplog.text
    assert torch.equal(loaded(X), model.eval()(X))


def test_missing_architecture(tmp_path):
    path = prunekit.save(net(), tmp_path / "m.safetensors")
    with pytest.raises(prunekit.CheckpointError, match="pass model="):
        prunekit.load(path)
