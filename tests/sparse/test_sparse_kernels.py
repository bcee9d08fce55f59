"""prunekit.sparse: SparseLinear equals the dense layer, sparsify decides per layer (timer injected), save/load keeps it.

No test asserts on real timings: decisions are forced (``force=``) or come from a stub ``timer``.
"""
from __future__ import annotations

import copy
import hashlib
import json

import pytest
import torch
from torch import nn

import prunekit
from prunekit.io.integrity import tensor_sha256
from prunekit.sparse import DEFAULTS, SparseLinear, SparsifyTable, densify, interleaved_median, sparsify
from prunekit.unstructured import set_mask
from zoo import ZOO




def mask_linears(model: nn.Module, ratio: float = 0.9) -> nn.Module:
    """Magnitude masks (unfinalized, torch.nn.utils.prune style) on every plain Linear."""
    for m in model.modules():
        if isinstance(m, nn.Linear) and type(m).forward is nn.Linear.forward:
            w = m.weight.detach().abs()
            k = int(w.numel() * ratio)
            thr = w.reshape(-1).kthvalue(max(k, 1)).values if k else -1.0
            set_mask(m, "weight", (w > thr).to(w.dtype))
    return model


def outputs(model, x):
    with torch.inference_mode():
        return model(*x) if isinstance(x, tuple) else model(x)


def close(a, b, tol=1e-5):
    if isinstance(a, (tuple, list)):
        return all(close(u, v, tol) for u, v in zip(a, b))
    a, b = a.detach(), b.detach()
    if a.shape != b.shape or not b.numel():
        return a.shape == b.shape
    return float((a - b).abs().max()) <= tol * max(float(b.abs().max()), 1.0)


def fixed_timer(table):
    """A timer stub: ``table[layer][label]`` milliseconds (records the thread count it ran under)."""
    seen = []

    def timer(layer, candidates):
        seen.append((layer, sorted(candidates), torch.get_num_threads()))
        for fn in candidates.values():
            fn()  # the candidates run
        return {label: table[layer][label] for label in candidates}
    timer.seen = seen
    return timer


ZOO_WITH_LINEAR = [n for n in ZOO.names() if any(isinstance(m, nn.Linear) for m in ZOO.get(n).build().modules())]
MODELS = [("mlp", {}), ("lenet300_100", {})]


# --- outputs equal dense ---

@pytest.mark.parametrize("fmt", ["csr", "scipy", "native"])
@pytest.mark.parametrize("name", ZOO_WITH_LINEAR)
def test_zoo_outputs_equal_dense_masked_model(name, fmt):
    entry = ZOO.get(name)
    model, x = mask_linears(entry.build().eval()), entry.example_inputs()
    before = outputs(model, x)
    sparse, table = sparsify(model, x, batch_size=3, force=fmt)
    assert table.finalized and isinstance(table, SparsifyTable)
    assert any(isinstance(m, nn.Linear) for m in model.modules())  # the caller's model is untouched (still masked)
    assert any(hasattr(m, "weight_mask") for m in model.modules())
    replaced = [n for n, m in sparse.named_modules() if isinstance(m, SparseLinear)]
    assert replaced and all(r["choice"] == fmt for r in table if r["name"] in replaced)
    assert sorted(sparse._prunekit_sparse) == sorted(replaced)
    for r in table:  # every dense row says why
        assert r["choice"] != "dense" or r["note"]
    assert close(outputs(sparse, x), before), name
    assert str(table).count("\n") == len(table) + 3


@pytest.mark.parametrize("name,kwargs", MODELS)
def test_prunekit_models_every_shape_and_batch(name, kwargs):
    model = prunekit.models.create_model(name, **kwargs).eval()
    in_f = next(m for m in model.modules() if isinstance(m, nn.Linear)).in_features
    x = torch.randn(5, in_f)
    pruned = prunekit.prune(model, x, ratio=0.9, scope="local")  # weight masks through the public API
    sparse, table = prunekit.sparsify(pruned, x, force="csr")
    assert all(r["choice"] == "csr" for r in table) and all(r["input"][0] == 1 for r in table)
    for n in (1, 2, 7):  # batch 1 takes torch.mv, the others the matrix product
        xb = torch.randn(n, in_f)
        assert close(outputs(sparse, xb), outputs(pruned, xb))


@pytest.mark.parametrize("fmt", ["csr", "bsr", "scipy", "native"])
@pytest.mark.parametrize("bias", [True, False])
def test_sparse_linear_any_leading_dims(fmt, bias):
    torch.manual_seed(0)
    lin = nn.Linear(16, 8, bias=bias)
    with torch.no_grad():
        lin.weight[:, 4:12] = 0  # block-structured: whole 4x4 blocks are zero
    layer = SparseLinear.from_linear(lin, format=fmt, blocksize=4 if fmt == "bsr" else None)
    assert layer.prunekit_leaf and layer.nnz == 64
    for shape in [(16,), (1, 16), (3, 16), (2, 5, 16), (0, 16)]:
        x = torch.randn(*shape)
        with torch.inference_mode():
            assert close(layer(x), lin(x)), shape
    assert torch.equal(layer.dense_weight(), lin.weight.detach())
    x = torch.randn(4, 16)
    assert close(layer.to_linear()(x), lin(x))
    twin = copy.deepcopy(layer)
    assert torch.equal(twin(x), layer(x))
    assert set(layer.state_dict()) == {"crow_indices", "col_indices", "values"} | ({"bias"} if bias else set())


@pytest.mark.parametrize("fmt", ["csr", "scipy", "native"])
def test_gradients_flow_to_the_input_not_the_weights(fmt):
    lin = nn.Linear(6, 4)
    layer = SparseLinear.from_linear(lin, format=fmt)
    x = torch.randn(3, 6, requires_grad=True)
    layer(x).sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    lin(x2).sum().backward()
    assert torch.allclose(x.grad, x2.grad, atol=1e-6)
    assert not any(p.requires_grad for p in layer.parameters())


def test_kernel_is_rebuilt_when_buffers_change():
    layer = SparseLinear.from_linear(nn.Linear(5, 3), format="scipy")
    x = torch.randn(2, 5)
    w = layer.dense_weight().clone()
    layer(x)  # builds and caches the scipy kernel
    with torch.no_grad():
        layer.values.mul_(2)
        layer.bias.zero_()
    assert torch.allclose(layer(x), x @ (2 * w).T, atol=1e-6)


# --- decisions ---

def two_layer():
    torch.manual_seed(1)
    return mask_linears(nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8), nn.ReLU(), nn.Linear(8, 4)))


def test_only_layers_where_sparse_measures_faster_become_sparse():
    timer = fixed_timer({"0": {"dense": 1.0, "csr": 0.5, "scipy": 0.8, "native": 0.7},  # csr 2x: sparse
                         "2": {"dense": 1.0, "csr": 2.0, "scipy": 1.5, "native": 1.8},  # sparse loses: dense
                         "4": {"dense": 1.0, "csr": 0.95, "scipy": 0.99, "native": 0.97}})  # 1.05x < 1.1: dense
    model, table = sparsify(two_layer(), torch.randn(2, 32), batch_size=16, timer=timer)
    assert isinstance(model[0], SparseLinear) and model[0].format == "csr"
    assert type(model[2]) is nn.Linear and type(model[4]) is nn.Linear
    rows = {r["name"]: r for r in table}
    assert rows["0"]["choice"] == "csr" and rows["0"]["speedup"] == pytest.approx(2.0)
    assert rows["2"]["choice"] == "dense" and "dense wins" in rows["2"]["note"]
    assert rows["4"]["choice"] == "dense" and rows["4"]["speedup"] == pytest.approx(1 / 0.95)
    assert rows["0"]["sparse_ms"] == {"csr": 0.5, "bsr": None, "scipy": 0.8, "native": 0.7}
    assert rows["0"]["input"] == (16, 32)  # the layer's real input at batch_size
    assert [s[1] for s in timer.seen] == [["csr", "dense", "native", "scipy"]] * 3  # bsr: unstructured, not tried
    assert "bsr: unstructured" in rows["0"]["note"]
    assert model._prunekit_sparse == {"0": model[0].record()}
    text = table.table()
    assert "dense wins" in text and "1 of 3 Linear layer(s) sparse" in text
    # min_speedup lower: layer 4 too; scipy the fastest of layer 2 but still slower than dense
    model, table = sparsify(two_layer(), torch.randn(2, 32), timer=timer, min_speedup=1.0)
    assert isinstance(model[4], SparseLinear) and type(model[2]) is nn.Linear


def test_threads_are_set_while_measuring_and_restored():
    timer = fixed_timer({n: {"dense": 1.0, "csr": 2.0, "scipy": 2.0, "native": 2.0} for n in "024"})
    old = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        _, table = sparsify(two_layer(), torch.randn(2, 32), timer=timer, threads=1)
        assert {s[2] for s in timer.seen} == {1} and table.threads == 1
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(old)


def test_layers_skipped_for_a_reason():
    model = two_layer()
    model[4] = nn.Linear(8, 4)  # dense: below min_sparsity
    timer = fixed_timer({n: {"dense": 1.0, "csr": 0.1, "scipy": 0.1, "native": 0.1} for n in "02"})
    out, table = sparsify(model, torch.randn(2, 32), timer=timer, exclude="2", formats=["csr"])
    rows = {r["name"]: r for r in table}
    assert "below min_sparsity" in rows["4"]["note"] and "not selected" in rows["2"]["note"]
    assert isinstance(out[0], SparseLinear) and [s[0] for s in timer.seen] == ["0"]
    again, table2 = sparsify(out, torch.randn(2, 32), timer=timer, inplace=True)  # already sparse layers stay
    assert again is out and {r["name"]: r["note"] for r in table2}["0"] == "already sparse"


def test_mha_out_proj_is_not_called_so_stays_dense():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp, self.attn = nn.Linear(8, 8), nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x):
            h = self.inp(x)
            return self.attn(h, h, h)[0]

    net = mask_linears(Net().eval())
    x = torch.randn(2, 5, 8)
    out, table = sparsify(net, x, force="csr")
    rows = {r["name"]: r for r in table}
    assert rows["attn.out_proj"]["choice"] == "dense" and isinstance(out.inp, SparseLinear)
    assert close(outputs(out, x), outputs(net, x))


def test_default_timer_runs_and_reports_milliseconds():
    lin = nn.Linear(8, 4)
    ms = interleaved_median("x", {"dense": lambda: lin(torch.ones(1, 8)), "other": lambda: None}, repeats=2, warmup=1)
    assert set(ms) == {"dense", "other"} and all(v >= 0 for v in ms.values())
    _, table = sparsify(two_layer(), torch.randn(2, 32), repeats=2, warmup=1, formats="csr")  # real timing, no assert
    assert all(r["dense_ms"] > 0 and r["sparse_ms"]["csr"] > 0 for r in table if r["dense_ms"] is not None)


@pytest.mark.parametrize("options,words", [
    ({"min_speedupp": 1}, "did you mean 'min_speedup'"),
    ({"bogus": 1}, "its options are batch_size, inplace"),
    ({"formats": ["csr", "coo"]}, "formats must be"),
    ({"formats": []}, "formats must be"),
    ({"force": "dense"}, "force must be"),
    ({"min_speedup": -1}, "min_speedup"),
    ({"min_sparsity": 2}, "fractions"),
    ({"repeats": 0}, "repeats"),
    ({"threads": 0}, "threads"),
    ({"blocksize": (0, 2)}, "blocksize"),
    ({"timer": 3}, "timer must be callable"),
    ({"inplace": "yes"}, "inplace"),
    ({"batch_size": 0}, "batch_size"),
    ({"include": "nothing_here"}, "include"),
])
def test_bad_options_are_config_errors(options, words):
    with pytest.raises(prunekit.ConfigError, match=words):
        prunekit.sparsify(two_layer(), torch.randn(2, 32), **options)
    assert "timer" in DEFAULTS and "force" in DEFAULTS


# --- save / load ---

def sparsified(fmt="csr"):
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[0].weight[:, 8:] = 0  # block zeros so bsr fits
        model[2].weight[torch.rand_like(model[2].weight) < 0.9] = 0
    timer = fixed_timer({"0": {"dense": 1.0, "csr": 0.5, "bsr": 0.4, "scipy": 0.6, "native": 0.45},
                         "2": {"dense": 1.0, "csr": 0.6, "bsr": 0.5, "scipy": 0.3, "native": 0.35},
                         "4": {"dense": 1.0, "csr": 9.0, "bsr": 9.0, "scipy": 9.0, "native": 9.0}})
    sparse, _ = sparsify(model, torch.randn(2, 16), timer=timer, min_sparsity=0.2, blocksize=4)
    return model, sparse


def fresh():
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 8), nn.ReLU(), nn.Linear(8, 3))


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_save_load_round_trip(tmp_path, suffix):
    dense, sparse = sparsified()
    assert isinstance(sparse[0], SparseLinear) and sparse[0].format == "bsr"
    assert isinstance(sparse[2], SparseLinear) and sparse[2].format == "scipy" and type(sparse[4]) is nn.Linear
    path = prunekit.save(sparse, tmp_path / f"m{suffix}")
    loaded = prunekit.load(path, fresh())
    assert [type(m).__name__ for m in loaded] == [type(m).__name__ for m in sparse]
    assert loaded[0].format == "bsr" and loaded[0].blocksize == (4, 4) and loaded[2].format == "scipy"
    assert loaded._prunekit_sparse == sparse._prunekit_sparse
    x = torch.randn(6, 16)
    assert torch.equal(outputs(loaded, x), outputs(sparse, x))
    assert close(outputs(loaded, x), outputs(dense, x))
    assert prunekit.io.read_checkpoint(path)[1]["sparse_kernels"]["layers"]["2"]["format"] == "scipy"
    back = densify(loaded)
    assert all(type(m) is not SparseLinear for m in back.modules()) and close(outputs(back, x), outputs(dense, x))


def test_save_load_after_finalized_weight_pruning_and_plain_models(tmp_path):
    model = nn.Sequential(nn.Linear(4, 3))
    loaded = prunekit.load(prunekit.save(model, tmp_path / "plain.safetensors"), nn.Sequential(nn.Linear(4, 3)))
    assert prunekit.io.read_checkpoint(tmp_path / "plain.safetensors")[1]["sparse_kernels"] is None
    assert type(loaded[0]) is nn.Linear


def raw(path):
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return {k: f.get_tensor(k) for k in f.keys()}, json.loads(f.metadata()["prunekit"])


def forge(path, meta_edit=None, tensor_edit=None):
    """Rewrite a checkpoint as a forger would: edits applied, every checksum recomputed."""
    from safetensors.torch import save_file

    tensors, meta = raw(path)
    if tensor_edit:
        tensor_edit(tensors)
    if meta_edit:
        meta_edit(meta)
    meta["sha256"] = {k: tensor_sha256(v) for k, v in tensors.items()}
    text = json.dumps(meta)
    save_file(tensors, str(path), metadata={"prunekit": text, "prunekit.sha256": hashlib.sha256(text.encode()).hexdigest()})
    return path


def layer_entry(key, value, layer="2"):
    return lambda meta: meta["sparse_kernels"]["layers"][layer].__setitem__(key, value)


def out_of_range(tensors):
    col = tensors["2.col_indices"].clone()
    col[0] = 10_000
    tensors["2.col_indices"] = col


@pytest.mark.parametrize("meta_edit,tensor_edit,words", [
    (lambda m: m["sparse_kernels"]["layers"].__setitem__("9", {"format": "csr"}), None, "lacks"),
    (lambda m: m["sparse_kernels"]["layers"].__setitem__("1", m["sparse_kernels"]["layers"]["2"]), None, "not a Linear"),
    (layer_entry("format", "coo"), None, "unknown format"),
    (layer_entry("in_features", 31), None, "shape"),
    (layer_entry("bias", False), None, "bias"),
    (layer_entry("nnz", -1), None, "nnz"),
    (layer_entry("nnz", 5), None, "shape mismatch"),
    (layer_entry("blocksize", [3, 3], layer="0"), None, "does not fit"),
    (lambda m: m.__setitem__("sparse_kernels", {"version": 7}), None, "malformed"),
    (None, out_of_range, "structure"),
])
def test_forged_sparse_records_are_refused(tmp_path, meta_edit, tensor_edit, words):
    _, sparse = sparsified()
    path = forge(prunekit.save(sparse, tmp_path / "m.safetensors"), meta_edit, tensor_edit)
    with pytest.raises(prunekit.CheckpointError, match=words):
        prunekit.load(path, fresh())


def test_changed_sparse_tensor_or_record_fails_the_checksums(tmp_path):
    _, sparse = sparsified()
    path = prunekit.save(sparse, tmp_path / "m.safetensors")
    tensors, meta = raw(path)
    from safetensors.torch import save_file

    meta["sparse_kernels"]["layers"]["2"]["format"] = "csr"  # edited record, old digest
    save_file(tensors, str(path), metadata={"prunekit": json.dumps(meta), "prunekit.sha256": "0" * 64})
    with pytest.raises(prunekit.CheckpointError, match="sha256"):
        prunekit.load(path, fresh())


def test_measure_counts_sparse_layers_as_the_dense_layers_they_compute():
    torch.manual_seed(0)
    model = mask_linears(nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5)), 0.8).eval()
    x = torch.randn(4, 20)
    fast, _ = sparsify(model, x, force="csr")
    assert any(isinstance(m, SparseLinear) for m in fast.modules())
    reference = prunekit.finalize(copy.deepcopy(model))  # the same weights in plain Linear layers
    got, want = prunekit.measure(fast, x, latency=False), prunekit.measure(reference, x, latency=False)
    for key in ("params", "nonzero_params", "macs", "nonzero_macs"):
        assert got[key] == want[key], key
    assert want["nonzero_params"] < want["params"]
