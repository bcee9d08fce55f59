"""prunekit.sparse.native: the C kernel equals the dense product on every shape, batch and thread count; without a
compiler (or disabled) everything still works through torch's CSR kernel and says why."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit.measure.latency import num_threads
from prunekit.sparse import SparseLinear, native, sparsify

AVAILABLE, WHERE = native.status()
needs_native = pytest.mark.skipif(not AVAILABLE, reason=f"native kernel unavailable here: {WHERE}")


def sparse_weight(out_f, in_f, density, seed=0, empty_rows=(), full_rows=()):
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(out_f, in_f, generator=g)
    w[torch.rand(out_f, in_f, generator=g) > density] = 0
    for r in empty_rows:
        w[r] = 0
    for r in full_rows:
        w[r] = torch.randn(in_f, generator=g)
    return w


def reference(x, w, b):
    """The dense product in float64: what every kernel approximates."""
    return F.linear(x.double(), w.double(), None if b is None else b.double()).float()


@needs_native
@pytest.mark.parametrize("batch", [1, 2, 7, 8, 15, 16, 17, 24, 33, 64])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_equals_dense_product_every_batch_and_thread_count(batch, threads):
    w = sparse_weight(37, 53, 0.15, seed=batch, empty_rows=(0, 5, 36), full_rows=(3,))
    b = torch.randn(37)
    layer = SparseLinear.from_dense(w, b, format="native")
    x = torch.randn(batch, 53)
    with num_threads(threads), torch.inference_mode():
        y = layer(x)
    assert y.shape == (batch, 37)
    assert torch.allclose(y, reference(x, w, b), rtol=1e-5, atol=1e-5)
    assert torch.equal(y[:, 0], b[0].expand(batch))  # an empty row is its bias, exactly


@needs_native
@pytest.mark.parametrize("threads", [2, 3])
def test_a_layer_big_enough_to_split_between_threads(threads):
    """About 2.7 million multiply-adds per call: the kernel starts threads (one per million at most)."""
    w = sparse_weight(600, 700, 0.4, seed=threads, empty_rows=(0, 599))
    b = torch.randn(600)
    layer = SparseLinear.from_dense(w, b, format="native")
    x = torch.randn(16, 700)
    with num_threads(threads), torch.inference_mode():
        y = layer(x)
    assert torch.allclose(y, reference(x, w, b), rtol=1e-4, atol=1e-4)


@needs_native
def test_no_bias_empty_matrix_and_more_threads_than_rows():
    w = torch.zeros(3, 10)
    w[1, 4] = 2.0
    layer = SparseLinear.from_dense(w, None, format="native")
    x = torch.randn(5, 10)
    with num_threads(8), torch.inference_mode():
        y = layer(x)
    assert torch.equal(y[:, [0, 2]], torch.zeros(5, 2)) and torch.allclose(y[:, 1], 2.0 * x[:, 4])
    empty = SparseLinear.from_dense(torch.zeros(4, 6), torch.arange(4.0), format="native")
    with torch.inference_mode():
        assert torch.equal(empty(torch.randn(3, 6)), torch.arange(4.0).expand(3, 4))


@needs_native
def test_chained_layers_and_strided_inputs():
    w1, w2 = sparse_weight(64, 40, 0.2, 1), sparse_weight(24, 64, 0.2, 2)
    b1, b2 = torch.randn(64), torch.randn(24)
    l1, l2 = SparseLinear.from_dense(w1, b1, format="native"), SparseLinear.from_dense(w2, b2, format="native")
    x = torch.randn(16, 80)[:, ::2]  # a strided view
    with torch.inference_mode():
        h = l1(x)
        assert not h.is_contiguous()  # the transposed (out, n) buffer: the next native layer reads it in place
        y = l2(torch.relu(h))
        want = reference(torch.relu(reference(x, w1, b1)), w2, b2)
        assert torch.allclose(y, want, rtol=1e-4, atol=1e-4)
        x3 = torch.randn(2, 3, 40)  # leading dimensions
        assert torch.allclose(l1(x3), reference(x3, w1, b1), rtol=1e-5, atol=1e-5)


@needs_native
def test_sparsify_times_native_and_it_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8))
    pruned = prunekit.prune(model, torch.randn(4, 32), ratio=0.9, scope="local")
    sparse, table = sparsify(pruned, torch.randn(4, 32), batch_size=16, force="native")
    assert [r["choice"] for r in table] == ["native", "native"]
    path = prunekit.save(sparse, tmp_path / "m.safetensors")
    loaded = prunekit.load(path, nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 8)))
    assert [m.format for m in loaded if isinstance(m, SparseLinear)] == ["native", "native"]
    x = torch.randn(16, 32)
    dense = prunekit.finalize(prunekit.clone_model(pruned))
    with torch.inference_mode():
        assert torch.equal(loaded(x), sparse(x))
        assert torch.allclose(loaded(x), dense(x), rtol=1e-5, atol=1e-5)


def test_other_dtypes_and_gradients_fall_back_to_torch_csr():
    w = sparse_weight(12, 20, 0.3, 3).double()
    b = torch.randn(12, dtype=torch.float64)
    layer = SparseLinear.from_dense(w, b, format="native")
    x = torch.randn(5, 20, dtype=torch.float64)
    with torch.inference_mode():
        assert torch.allclose(layer(x), F.linear(x, w, b))  # float64: not the float32 kernel
    model = nn.Sequential(nn.Linear(20, 12).double())
    with torch.no_grad():
        model[0].weight.copy_(w)
    _, table = sparsify(model, x, formats=["native"], min_sparsity=0.1)
    assert table[0]["choice"] == "dense" and "native: needs float32" in table[0]["note"]
    lin = nn.Linear(20, 12)
    fl = SparseLinear.from_linear(lin, format="native")
    xg = torch.randn(3, 20, requires_grad=True)
    fl(xg).sum().backward()
    assert torch.allclose(xg.grad, lin.weight.detach().sum(0).expand(3, 20), atol=1e-5)


def run_python(code: str, **env) -> dict:
    """Run ``code`` in a fresh interpreter (the kernel state is per process); its last stdout line as JSON."""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout.strip().splitlines()[-1])


FALLBACK = """
import json, warnings, torch
from torch import nn
from prunekit.sparse import SparseLinear, native, sparsify
ok, why = native.status()
w = torch.zeros(6, 8); w[::2, ::3] = 1.0
layer = SparseLinear.from_dense(w, torch.ones(6), format="native")
x = torch.randn(4, 8)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    y1, y2 = layer(x), layer(x)
model = nn.Sequential(nn.Linear(8, 6))
with torch.no_grad():
    model[0].weight.copy_(w)
_, table = sparsify(model, x, force="native")
print(json.dumps({"ok": ok, "why": why, "equal": bool(torch.allclose(y1, x @ w.T + 1, atol=1e-6)),
                  "warnings": [str(c.message) for c in caught if c.category is RuntimeWarning],
                  "choice": table[0]["choice"], "note": table[0]["note"]}))
"""


def test_disabled_kernel_falls_back_with_one_warning_and_a_note():
    got = run_python(FALLBACK, PRUNEKIT_NATIVE_KERNELS="0")
    assert not got["ok"] and got["why"] == "disabled by PRUNEKIT_NATIVE_KERNELS"
    assert got["equal"] and len(got["warnings"]) == 1 and "run torch's CSR kernel" in got["warnings"][0]
    assert got["choice"] == "dense" and "native: unavailable (disabled by PRUNEKIT_NATIVE_KERNELS)" in got["note"]


def test_a_compiler_that_fails_is_reported(tmp_path):
    got = run_python(FALLBACK, CC=str(tmp_path / "no-such-cc"), PRUNEKIT_CACHE_DIR=str(tmp_path / "cache"))
    assert not got["ok"] and "no-such-cc" in got["why"] and got["equal"] and got["choice"] == "dense"


@needs_native
def test_built_once_into_the_cache_folder_then_reused(tmp_path):
    code = "import json; from prunekit.sparse import native; print(json.dumps(native.status()))"
    env = {"PRUNEKIT_CACHE_DIR": str(tmp_path)}
    ok, where = run_python(code, **env)
    assert ok and where.startswith(str(tmp_path / "kernels")) and where.endswith(".so")
    stamp = os.stat(where).st_mtime_ns
    assert run_python(code, **env) == [True, where] and os.stat(where).st_mtime_ns == stamp
    assert [p.name for p in (tmp_path / "kernels").iterdir()] == [os.path.basename(where)]  # no temporaries left
