"""Damaged and forged checkpoints, failed writes: each names the cause, loads nothing wrong and leaves no half file."""
from __future__ import annotations

import errno
import hashlib
import json
import os
import struct

import pytest
import torch
from torch import nn

import prunekit
from prunekit import CheckpointError
from prunekit.io.checkpoint import DIGEST_KEY, META_KEY, tensor_sha256

from .conftest import assert_fault, no_temp_files, tree

X = torch.randn(2, 1, 6, 6)
VARIANTS = [(".safetensors", False), (".safetensors", True), (".pt", False), (".pt", True)]


def net():
    torch.manual_seed(3)
    return nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 4 * 4, 5))


def pruned(structured=False):
    if structured:
        from prunekit.api import prune

        return prune(net(), X, ratio=0.5, granularity="channel", criterion="l2", scope="local")
    return prunekit.prune(net(), X, ratio=0.8)


def raw(path):
    """``(stored tensors, metadata dict, metadata digest)`` of a prunekit file, read without prunekit."""
    if path.suffix == ".pt":
        d = torch.load(path, weights_only=True)
        text, digest = d.pop(META_KEY), d.pop(DIGEST_KEY, None)
        return d, json.loads(text), digest
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        md = f.metadata()
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(md["prunekit"]), md.get("prunekit.sha256")


def forge(path, *, meta=None, tensors=None, digest=True, sha=True):
    """Rewrite ``path`` as a forger would: edited metadata/tensors, checksums recomputed (unless told otherwise)."""
    old_tensors, old_meta, _ = raw(path)
    tensors = old_tensors if tensors is None else tensors
    meta = dict(old_meta if meta is None else meta(old_meta) or old_meta)
    if sha:
        meta["sha256"] = {k: tensor_sha256(v) for k, v in tensors.items()}
    text = json.dumps(meta)
    extra = {DIGEST_KEY if path.suffix == ".pt" else "prunekit.sha256": hashlib.sha256(text.encode()).hexdigest()}
    if not digest:
        extra = {}
    if path.suffix == ".pt":
        torch.save({**tensors, META_KEY: text, **extra}, path)
    else:
        from safetensors.torch import save_file

        save_file(tensors, str(path), metadata={"prunekit": text, **extra})
    return path


def flip_bit(path, key):
    """Flip one bit inside the stored bytes of tensor ``key``, leaving the container format intact."""
    data = bytearray(path.read_bytes())
    tensors, _, _ = raw(path)
    if path.suffix == ".pt":
        needle = tensors[key].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        at = bytes(data).find(needle)
        assert at > 0 and bytes(data).find(needle, at + 1) < 0
        at += len(needle) // 2
    else:
        n = struct.unpack("<Q", data[:8])[0]
        begin, end = json.loads(data[8: 8 + n])[key]["data_offsets"]
        at = 8 + n + (begin + end) // 2
    data[at] ^= 0x10
    path.write_bytes(bytes(data))


def caller_model_untouched(model, before):
    return all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


# --- one flipped bit, anywhere ---

@pytest.mark.parametrize("suffix,sparse", VARIANTS)
@pytest.mark.parametrize("tensor", ["0.weight_orig", "4.bias"])
def test_flipped_bit_in_a_tensor_names_it(tmp_path, suffix, sparse, tensor):
    path = prunekit.save(pruned(), tmp_path / f"m{suffix}", sparse=sparse)
    stored = [k for k in raw(path)[0] if k.split("::")[0] == tensor]
    key = max(stored, key=lambda k: raw(path)[0][k].numel())  # the values of a sparse tensor, or the tensor itself
    flip_bit(path, key)
    before = tree(tmp_path)
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.load(path, net())
    assert_fault(excinfo, CheckpointError, f"tensor {tensor!r}", "sha256", "corrupt", str(path))
    assert tree(tmp_path) == before


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_changed_byte_in_metadata_is_detected(tmp_path, suffix):
    path = prunekit.save(pruned(structured=True), tmp_path / f"m{suffix}", metadata={"note": "abc-123"})
    data = path.read_bytes()
    assert data.count(b"abc-123") == 1
    path.write_bytes(data.replace(b"abc-123", b"abc-124"))  # still valid JSON, still a valid container
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.load(path, net())
    assert_fault(excinfo, CheckpointError, "metadata", "pruning plan", "sha256", "corrupt")


def test_format_2_file_without_checksum_is_refused(tmp_path):
    path = forge(prunekit.save(pruned(), tmp_path / "m.safetensors"), digest=False)
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.load(path, net())
    assert_fault(excinfo, CheckpointError, "format version 2", "lacks the metadata checksum")


@pytest.mark.parametrize("edit,words", [
    ({"version": "3"}, ("format version '3'", "newer prunekit")),
    ({"version": 2}, ("format version 2", "reads versions 1, 2")),
    ({"format": "other-tool"}, ("not a prunekit checkpoint", "'other-tool'")),
])
def test_unknown_format_or_version_is_refused(tmp_path, edit, words):
    path = forge(prunekit.save(pruned(), tmp_path / "m.safetensors"), meta=lambda m: {**m, **edit})
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.load(path, net())
    assert_fault(excinfo, CheckpointError, *words)


def test_missing_and_unlisted_tensors_are_named(tmp_path):
    path = prunekit.save(pruned(), tmp_path / "m.safetensors")
    tensors, meta, _ = raw(path)
    forge(path, tensors={k: v for k, v in tensors.items() if k != "4.bias"}, sha=False)  # listed, not stored
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.load(path, net())
    assert_fault(excinfo, CheckpointError, "lacks tensor '4.bias'", "truncated")
    forge(path, tensors={**tensors, "extra": torch.ones(3)}, meta=lambda m: meta, sha=False)  # stored, not listed
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.load(path, net())
    assert_fault(excinfo, CheckpointError, "'extra'", "does not list")


def test_format_1_file_loads_with_a_warning(tmp_path, caplog):
    """Written by the previous prunekit: float32 masks, no checksums."""
    from safetensors.torch import save_file

    model = pruned().eval()
    meta = {"format": "prunekit", "version": "1", "sparse": False, "masked": ["0.weight", "4.weight"],
            "plan": None, "model_spec": None, "user": {}}
    path = tmp_path / "old.safetensors"
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path), metadata={"prunekit": json.dumps(meta)})
    with caplog.at_level("WARNING", logger="prunekit.io.checkpoint"):
        loaded = prunekit.load(path, net())
    assert "format 1" in caplog.text and "without checksums" in caplog.text
    assert torch.equal(loaded(X), model(X))


# --- forged plans and masks (checksums recomputed: only validation stops them) ---

def set_in(meta, *keys_and_value):
    *keys, last, value = keys_and_value
    d = meta
    for k in keys:
        d = d[k]
    d[last] = value
    return meta


PLAN_FORGERIES = [
    ("index out of range", lambda m: set_in(m, "plan", "modules", "0", "keep", "out", [1, 99]),
     ("layer '0'", "index 99", "only 4")),
    ("negative index", lambda m: set_in(m, "plan", "modules", "0", "keep", "out", [-1, 2]),
     ("layer '0'", "non-negative")),
    ("repeated index", lambda m: set_in(m, "plan", "modules", "1", "keep", "chan", [2, 2]),
     ("layer '1'", "increasing")),
    ("layer the model lacks", lambda m: set_in(m, "plan", "modules", "7", {"type": "Conv2d", "keep": {"out": [0]}}),
     ("layer '7'", "does not have")),
    ("layer of another type", lambda m: set_in(m, "plan", "modules", "0", "type", "Linear"),
     ("'0'", "Linear", "another architecture")),
    ("attribute that is not an int", lambda m: set_in(m, "plan", "attributes", [{"module": "4", "attr": "forward", "value": 1}]),
     ("'forward'", "layer '4'", "not an int attribute")),
    ("removed block that does not exist", lambda m: set_in(m, "plan", "removed_blocks", ["9"]),
     ("layer '9'", "does not have")),
    ("input features out of range", lambda m: set_in(m, "plan", "input_features", {"module": "4", "keep": [0, 500]}),
     ("layer '4'", "[0, 32)")),
    ("masked layer the model lacks", lambda m: set_in(m, "masked", ["nope.weight"]),
     ("'nope.weight'", "no layer 'nope'", "another architecture")),
    ("masked parameter the layer lacks", lambda m: set_in(m, "masked", ["4.gamma"]),
     ("'4.gamma'", "layer '4'", "no such parameter")),
]


@pytest.mark.parametrize("what,edit,words", PLAN_FORGERIES, ids=[f[0] for f in PLAN_FORGERIES])
def test_forged_plan_names_the_layer(tmp_path, what, edit, words):
    model = pruned(structured=True)
    path = forge(prunekit.save(model, tmp_path / "m.safetensors"), meta=edit)
    target = net()
    before_state = {k: v.clone() for k, v in target.state_dict().items()}
    before = tree(tmp_path)
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.load(path, target)
    assert_fault(excinfo, CheckpointError, str(path), *words)
    assert caller_model_untouched(target, before_state) and tree(tmp_path) == before


def test_checkpoint_of_another_architecture_names_the_layer(tmp_path):
    path = prunekit.save(pruned(structured=True), tmp_path / "m.safetensors")
    other = nn.Sequential(nn.Linear(36, 4), nn.BatchNorm1d(4), nn.ReLU(), nn.Flatten(), nn.Linear(64, 5))
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.load(path, other)
    assert_fault(excinfo, CheckpointError, "'0'", "Conv2d", "another architecture")
    smaller = nn.Sequential(nn.Conv2d(1, 8, 3))  # layer "0" fits the plan, "1" and "4" do not exist
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.load(path, smaller)
    assert_fault(excinfo, CheckpointError, "layer '1'", "does not have")


# --- failed writes: the earlier checkpoint stays, no half file ---

def partial_writer(code):
    def fake(*args, **kwargs):
        target = args[1]
        if hasattr(target, "write"):
            target.write(b"half a checkpoint")
        else:
            with open(target, "wb") as f:
                f.write(b"half a checkpoint")
        raise OSError(code, os.strerror(code))
    return fake


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_disk_full_keeps_the_old_file(tmp_path, monkeypatch, suffix):
    import safetensors.torch

    path = prunekit.save(net(), tmp_path / f"m{suffix}")
    before = tree(tmp_path)
    monkeypatch.setattr(safetensors.torch, "save_file", partial_writer(errno.ENOSPC))
    monkeypatch.setattr(torch, "save", partial_writer(errno.ENOSPC))
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.save(pruned(), path)
    assert_fault(excinfo, CheckpointError, str(path), "No space left on device", "free disk space", "unchanged")
    assert tree(tmp_path) == before
    no_temp_files(tmp_path)


def test_disk_filling_up_inside_torch_save_names_the_cause(tmp_path, monkeypatch):
    """The real torch.save writing into a file that fills up after 200 bytes (torch itself says "unexpected pos")."""
    import prunekit.io.checkpoint as ckpt

    class FillingFile:
        def __init__(self, path, mode, buffering=-1):
            self.f, self.left = open(path, mode, buffering=buffering), 200

        def write(self, data):
            if not self.left:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            n = min(self.left, len(data))
            self.left -= n
            return self.f.write(bytes(data[:n]))

        def flush(self):
            self.f.flush()

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

    path = prunekit.save(net(), tmp_path / "m.pt")
    before = tree(tmp_path)
    monkeypatch.setattr(ckpt, "open", FillingFile, raising=False)
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.save(pruned(), path)
    assert_fault(excinfo, CheckpointError, str(path), "No space left on device", "errno 28", "free disk space")
    assert tree(tmp_path) == before
    no_temp_files(tmp_path)


def test_safetensors_io_error_text_is_understood(tmp_path, monkeypatch):
    import safetensors.torch

    def fake(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise Exception("Error while serializing: I/O error: No space left on device (os error 28)")

    monkeypatch.setattr(safetensors.torch, "save_file", fake)
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.save(net(), tmp_path / "m.safetensors")
    assert_fault(excinfo, CheckpointError, "errno 28", "free disk space")
    assert tree(tmp_path) == {}


def test_read_only_folder(tmp_path, monkeypatch):
    real_open = os.open

    def read_only(path, flags, *args, **kwargs):
        if str(path).startswith(str(tmp_path)) and flags & os.O_CREAT:
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", read_only)
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.save(net(), tmp_path / "m.safetensors")
    assert_fault(excinfo, CheckpointError, "Read-only file system", "writable", "m.safetensors")
    assert tree(tmp_path) == {}


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() == 0, reason="root writes through folder permissions")
def test_folder_without_write_permission(tmp_path):
    folder = tmp_path / "locked"
    folder.mkdir()
    folder.chmod(0o555)
    try:
        with pytest.raises(CheckpointError) as excinfo:
            prunekit.save(net(), folder / "m.safetensors")
        assert_fault(excinfo, CheckpointError, "Permission denied", "permission")
        assert tree(folder) == {}
    finally:
        folder.chmod(0o755)


def test_path_is_a_folder(tmp_path):
    (tmp_path / "m.safetensors").mkdir()
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.save(net(), tmp_path / "m.safetensors")
    assert_fault(excinfo, CheckpointError, "is a folder", "file name")
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.load(tmp_path / "m.safetensors", net())
    assert_fault(excinfo, CheckpointError, "is a folder")
    assert tree(tmp_path) == {}


def test_parent_is_a_file(tmp_path):
    (tmp_path / "runs").write_text("a file, not a folder")
    before = tree(tmp_path)
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.save(net(), tmp_path / "runs" / "m.safetensors")
    assert_fault(excinfo, CheckpointError, "runs", "not a folder")
    assert tree(tmp_path) == before


def test_special_file_is_not_replaced(tmp_path):
    fifo = tmp_path / "pipe.safetensors"
    os.mkfifo(fifo)
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.save(net(), fifo)
    assert_fault(excinfo, CheckpointError, "not a regular file")
    assert fifo.is_fifo() and sorted(p.name for p in tmp_path.iterdir()) == ["pipe.safetensors"]


def test_interrupted_write_leaves_no_temp_file(tmp_path, monkeypatch):
    import safetensors.torch

    path = prunekit.save(net(), tmp_path / "m.safetensors")
    before = tree(tmp_path)

    def interrupted(tensors, filename, metadata=None):
        open(filename, "wb").write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(safetensors.torch, "save_file", interrupted)
    with pytest.raises(KeyboardInterrupt):
        prunekit.save(pruned(), path)
    assert tree(tmp_path) == before
    no_temp_files(tmp_path)
