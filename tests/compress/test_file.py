"""The Deep-Compression file: bit-exact round trips (LeNet-300-100, a conv net, a structured plan), damage, sizes."""
import hashlib
import json
import struct
from pathlib import Path

import pytest
import torch
from torch import nn

import prunekit
from prunekit import CheckpointError, ConfigError
from prunekit.compress import MAGIC, decode_deep, deep_compression_sizes, encode_deep, share_weights
from prunekit.compress.file import pack_header, unpack_header
from prunekit.models import create_model
from prunekit.unstructured import get_masks
from bits import same_bits

X = torch.randn(4, 1, 28, 28)




def assert_same_state(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    for k in sa:
        assert same_bits(sa[k], sb[k]), k


def lenet(ratio=0.9, bits=5):
    torch.manual_seed(0)
    model = prunekit.prune(create_model("lenet300_100"), X, ratio=ratio)
    return share_weights(model, bits=bits)[0].eval()


def conv_net():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Conv2d(1, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 8, 3, bias=False), nn.ReLU(),
                        nn.Flatten(), nn.Linear(8 * 24 * 24, 10))
    net.train()
    net(torch.randn(8, 1, 28, 28))  # non-trivial BatchNorm statistics
    return net.eval()


def test_decode_is_bit_exact_on_lenet():
    model = lenet()
    state, header = decode_deep(encode_deep(model))
    ref = model.state_dict()
    assert list(state) == list(ref) or set(state) == set(ref)
    assert all(same_bits(state[k], ref[k]) for k in ref)
    assert header["masked"] == ["classifier.weight", "features.1.weight", "features.3.weight"]
    kinds = {e["name"]: e["kind"] for e in header["entries"]}
    assert kinds["features.1.weight_orig"] == "shared" and kinds["features.1.bias"] == "raw"
    assert "features.1.weight_mask" not in kinds  # the mask is the kept positions


@pytest.mark.parametrize("finalized", [False, True])
def test_conv_net_round_trip_through_save_and_load(tmp_path, finalized):
    model = prunekit.prune(conv_net(), X, ratio=0.6)
    if finalized:
        model = prunekit.finalize(model)
    shared, _ = share_weights(model, bits={"conv": 6, "linear": 4})
    path = prunekit.save(shared, tmp_path / "net.deep", codec="deep")
    assert path.read_bytes()[:8] == MAGIC
    loaded = prunekit.load(path, conv_net())
    assert_same_state(shared, loaded)
    assert torch.equal(loaded(X), shared(X))
    if not finalized:
        masks = get_masks(shared)
        assert set(get_masks(loaded)) == set(masks) and all(torch.equal(get_masks(loaded)[k], masks[k]) for k in masks)
        assert loaded[0].weight.equal(shared[0].weight)  # masks re-installed: weight == orig * mask


def test_lenet_save_load_gives_identical_outputs_and_rebuilds_from_the_spec(tmp_path):
    model = lenet()
    path = prunekit.save(model, tmp_path / "lenet.pkd", codec="deep", model_spec={"name": "lenet300_100", "kwargs": {}})
    loaded = prunekit.load(path)  # the registered model spec rebuilds the architecture
    x = torch.randn(16, 1, 28, 28)
    assert torch.equal(loaded(x), model(x))
    assert_same_state(model, loaded)


def test_save_shares_an_unshared_model_as_share_weights_would(tmp_path):
    torch.manual_seed(0)
    pruned = prunekit.prune(create_model("lenet300_100"), X, ratio=0.9)
    path = prunekit.save(pruned, tmp_path / "m.deep", codec="deep", bits=4)
    assert_same_state(share_weights(pruned, bits=4)[0], prunekit.load(path, create_model("lenet300_100")))


def test_structured_plan_is_applied_before_the_weights(tmp_path):
    torch.manual_seed(0)
    model = prunekit.prune(create_model("lenet300_100"), X, granularity="channel", ratio=0.5)
    model = prunekit.prune(model, X, ratio=0.8)
    shared, _ = share_weights(model, bits=5)
    path = prunekit.save(shared, tmp_path / "s.deep", codec="deep", metadata={"note": "x"})
    loaded = prunekit.load(path, create_model("lenet300_100"))
    assert loaded.features[1].weight.shape == shared.features[1].weight.shape
    assert torch.equal(loaded(X), shared(X))
    assert prunekit.io.read_checkpoint(path)[1]["user"] == {"note": "x"}


def test_tied_weights_are_stored_once(tmp_path):
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(6, 6)
            self.b = nn.Linear(6, 6)
            self.b.weight = self.a.weight

        def forward(self, x):
            return self.b(self.a(x))

    model = share_weights(Tied(), bits=2)[0]
    state, header = decode_deep(encode_deep(model))
    assert header["aliases"] == {"b.weight": "a.weight"} and state["b.weight"] is state["a.weight"]
    x = torch.randn(3, 6)
    loaded = prunekit.load(prunekit.save(model, tmp_path / "tied.deep", codec="deep"), Tied())
    assert torch.equal(loaded(x), model(x))
    assert loaded.b.weight is loaded.a.weight


def test_extra_header_entries_cannot_replace_the_files_own():
    model = lenet()
    assert decode_deep(encode_deep(model, extra={"sparse_kernels": {"version": 1}}))[1]["sparse_kernels"] == {"version": 1}
    with pytest.raises(CheckpointError, match="'entries'"):
        encode_deep(model, extra={"entries": []})


def test_options_are_checked():
    model = lenet()
    with pytest.raises(ConfigError, match="'safetensors', 'deep'"):
        prunekit.save(model, "/tmp/never.bin", codec="zip")
    with pytest.raises(ConfigError, match="codec='deep'"):
        prunekit.save(model, "/tmp/never.safetensors", bits=4)
    with pytest.raises(ConfigError, match="sparse"):
        prunekit.save(model, "/tmp/never.deep", codec="deep", sparse=True)


# --- damage ---

def parts(data):
    (n,) = struct.unpack_from("<I", data, 8)
    return json.loads(unpack_header(data[12:12 + n], "test")), data[12 + n + 32:]


def forge(header, blobs, compress=False):
    text = json.dumps(header).encode()
    text = pack_header(text) if compress else text  # a plain JSON header field is read too
    return MAGIC + struct.pack("<I", len(text)) + text + hashlib.sha256(text).digest() + blobs


@pytest.fixture(scope="module")
def good():
    return encode_deep(lenet())


def test_truncated_file(tmp_path, good):
    for cut in (5, 10, 200, len(good) - 1):
        path = tmp_path / "t.deep"
        path.write_bytes(good[:cut])
        with pytest.raises(CheckpointError, match="truncated|magic"):
            prunekit.load(path, create_model("lenet300_100"))
    with pytest.raises(CheckpointError, match="after its last blob"):
        decode_deep(good + b"\0")


def test_flipped_bytes(good):
    header_at = 12 + 10
    for at, what in ((header_at, "header does not match"), (len(good) - 100, r"blob \d+ \(tensor .*checksum"),
                     (len(good) - 20000, r"blob \d+ \(tensor .*checksum")):
        bad = bytearray(good)
        bad[at] ^= 0x01
        with pytest.raises(CheckpointError, match=what):
            decode_deep(bytes(bad))


def test_forged_headers(tmp_path, good):
    header, blobs = parts(good)

    def forged(edit, match):
        h = json.loads(json.dumps(header))
        edit(h)
        with pytest.raises(CheckpointError, match=match):
            decode_deep(forge(h, blobs))

    assert header["version"] == 2
    forged(lambda h: h.update(version=3), "format version")
    forged(lambda h: h.update(version=True), "format version")
    forged(lambda h: h.update(format="other"), "format")
    bitmap = next(e for e in header["entries"] if e["kind"] == "shared" and e["positions"]["scheme"] == "bitmap")
    forged(lambda h: next(e for e in h["entries"] if e["name"] == bitmap["name"]).update(shape=[100, 301]), "bitmap has")
    forged(lambda h: h["entries"][1].update(shape=[300, 10]), "beyond|bitmap has|inconsistent")
    forged(lambda h: h["entries"][1].update(shape=[1 << 20, 1 << 20]), "more than")
    forged(lambda h: h["entries"][1].update(dtype="object"), "unknown dtype")
    forged(lambda h: h["entries"][1].update(kept=5), "kept positions|header says")
    forged(lambda h: h["entries"][1].update(k=1), "indices|codebook")
    forged(lambda h: h["entries"][1]["indices"].update(codec="pickle"), "unknown codec")
    forged(lambda h: h["entries"][0].update(blob=1), "used twice|do not add up")
    forged(lambda h: h["blobs"][0].update(crc32=h["blobs"][0]["crc32"] ^ 1), "blob 0")
    forged(lambda h: h.update(blobs_sha256="0" * 64), "blobs do not match their sha256")
    forged(lambda h: h.pop("blobs_sha256"), "blobs_sha256")
    forged(lambda h: h["blobs"][0].update(sha256="0" * 64, crc32=None), "'blobs' is malformed")
    raw = next(e for e in header["entries"] if e["kind"] == "raw")
    forged(lambda h: next(e for e in h["entries"] if e["name"] == raw["name"])["data"].update(layout="zigzag"),
           "byte layout|damaged")
    decode_deep(forge(header, blobs, compress=True))  # the forger's own compressed header reads back
    forged(lambda h: h["blobs"][0].update(size=h["blobs"][0]["size"] + 1), "truncated|sha256")
    forged(lambda h: h.update(aliases={"x": "nope"}), "tied")
    forged(lambda h: h.update(entries="x"), "entries")
    # a forged model spec is refused before anything is imported
    h = json.loads(json.dumps(header))
    h["model_spec"] = {"name": "os:system", "kwargs": {"command": "echo hacked"}}
    path = tmp_path / "forged.deep"
    path.write_bytes(forge(h, blobs))
    with pytest.raises(CheckpointError, match="os:system"):
        prunekit.load(path)
    # a shape that still decodes does not fit the model: refused before loading
    h = json.loads(json.dumps(header))
    h["entries"][1]["shape"] = [100, 2352]
    path.write_bytes(forge(h, blobs))
    with pytest.raises(CheckpointError, match="shape mismatch"):
        prunekit.load(path, create_model("lenet300_100"))


def test_compressed_header_refuses_a_bomb_and_damage(good):
    header, blobs = parts(good)
    text = json.dumps(header).encode()
    field = pack_header(text)
    assert field[0] in (1, 2) and len(field) < len(text) // 2  # the JSON compresses well
    for bad_field, what in ((field[:1] + struct.pack("<I", 1 << 30) + field[5:], "claims"),
                            (field[:1] + struct.pack("<I", len(text) + 1) + field[5:], "does not decode"),
                            (field[:3], "cut short"), (field[:-3], "does not decode")):
        data = MAGIC + struct.pack("<I", len(bad_field)) + bad_field + hashlib.sha256(bad_field).digest() + blobs
        with pytest.raises(CheckpointError, match=what):
            decode_deep(data)


def test_version_1_files_still_load():
    """A file written by prunekit's version-1 encoder (plain JSON header, a sha256 per blob, raw codebooks)."""
    data = (Path(__file__).parent / "fixtures" / "deep_v1.deep").read_bytes()
    state, header = decode_deep(data)
    assert header["version"] == 1 and "sha256" in header["blobs"][0]
    torch.manual_seed(3)  # the model the fixture was written from
    net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 5))
    net.train()
    net(torch.randn(8, 1, 8, 8))
    net = share_weights(prunekit.prune(net.eval(), torch.randn(1, 1, 8, 8), ratio=0.5), bits=3)[0].eval()
    ref = net.state_dict()
    assert set(state) == set(ref) and all(same_bits(state[k], ref[k]) for k in ref)
    again, _ = decode_deep(encode_deep(net))  # and the same model in version 2, smaller
    assert all(same_bits(again[k], ref[k]) for k in ref) and len(encode_deep(net)) < len(data) / 2
    bad = bytearray(data)
    bad[-5] ^= 1
    with pytest.raises(CheckpointError, match="does not match its sha256"):
        decode_deep(bytes(bad))


def test_float_bytes_by_plane_round_trip():
    from prunekit.compress.file import decode_bytes, encode_bytes

    t = (torch.randn(4000) * 0.01).to(torch.float16).to(torch.float32)  # low mantissa bytes zero: planes win
    raw = t.numpy().tobytes()
    sizes = {}
    desc, payload = encode_bytes(raw, 4, ("raw", "zlib"), sizes)
    assert desc.get("layout") == "planes" and len(payload) < len(raw) * 0.6
    assert decode_bytes(desc, payload, 4, "test") == raw
    assert sizes["planes/zlib/packed"] == len(payload)


# --- sizes ---

def test_size_waterfall_of_a_90_percent_pruned_5_bit_lenet(tmp_path):
    model = lenet(0.9, 5)
    sizes = deep_compression_sizes(model)
    dense = sum(t.numel() * 4 for k, t in model.state_dict().items() if not k.endswith("_mask"))
    assert sizes["dense_fp32"] == dense == 266610 * 4
    assert sizes["dense_fp32"] > sizes["pruned"] > sizes["shared"] > sizes["entropy_coded"]
    path = prunekit.save(model, tmp_path / "l.deep", codec="deep")
    assert sizes["file"] == path.stat().st_size
    ratio = dense / path.stat().st_size
    # an untrained LeNet: ~39x (trained weights cluster better; see docs/DEPLOY.md "Deep-Compression files")
    assert ratio > 30, ratio
    safetensors = prunekit.save(model, tmp_path / "l.safetensors").stat().st_size
    assert path.stat().st_size * 4 < safetensors
