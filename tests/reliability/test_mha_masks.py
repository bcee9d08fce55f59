"""Weight masks on nn.MultiheadAttention / nn.TransformerEncoder hold through training, eval, save / load, finalize.

Attention reads ``out_proj.weight`` (and the encoder layer's fused path every weight) without calling the
owning module, so the owner's mask pre-hook alone would leave a stale tensor there: the first backward
works, the second crashes ("backward through the graph a second time") and eval outputs go stale. The
reference for every output is an independent dense copy: a fresh model whose plain parameters are loaded
with ``weight_orig * weight_mask`` computed here.
"""
from __future__ import annotations


import pytest
import torch
from torch import nn

import prunekit
from prunekit.unstructured import get_masks, sparsity_report
from prunekit.unstructured.masks import RefreshMasks, masked_modules

from .conftest import tree

X = torch.randn(8, 5, 32)
Y = torch.randint(0, 3, (8,))


class Net(nn.Module):
    def __init__(self, layer: nn.Module, layers: int = 2):
        super().__init__()
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.encoder(x).mean(1))


def build(seed: int = 0) -> Net:
    torch.manual_seed(seed)
    return Net(nn.TransformerEncoderLayer(32, 4, dim_feedforward=64, dropout=0.0, batch_first=True))


def dense_reference(masked: nn.Module, fresh: nn.Module) -> nn.Module:
    """``fresh`` with plain parameters ``orig * mask`` (computed here, not by prunekit) and the other weights."""
    state = {}
    for key, value in masked.state_dict().items():
        if key.endswith("_mask"):
            continue
        if key.endswith("_orig"):
            base = key[: -len("_orig")]
            state[base] = value * masked.state_dict()[base + "_mask"]
        else:
            state[key] = value
    fresh.load_state_dict(state)
    return fresh


def effective_weights(model: nn.Module) -> dict:
    return {f"{n}.{p}": getattr(m, f"{p}_orig").detach() * getattr(m, f"{p}_mask") for n, m, p in masked_modules(model)}


def train(model: nn.Module, steps: int = 20, lr: float = 1e-2) -> list:
    model.train()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    losses = []
    for _ in range(steps):
        loss = nn.functional.cross_entropy(model(X), Y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    return losses


def outputs(model: nn.Module, grad: bool = False) -> torch.Tensor:
    model.eval()
    with torch.set_grad_enabled(grad):
        return model(X).detach()


def test_pruned_transformer_trains_keeps_its_masks_and_round_trips(tmp_path):
    model = prunekit.prune(build(), X, ratio=0.8)  # global l1 over Linear weights and in_proj_weight
    masks = get_masks(model)
    attn = [f"encoder.layers.{i}.self_attn.{p}" for i in range(2) for p in ("in_proj_weight", "out_proj.weight")]
    ffn = [f"encoder.layers.{i}.linear{j}.weight" for i in range(2) for j in (1, 2)]
    assert set(attn + ffn) <= set(masks)
    for key in attn[::2]:
        assert (masks[key] == 0).float().mean() > 0  # in_proj_weight is really pruned
    assert model.encoder.layers[0].self_attn.out_proj.weight.grad_fn is None  # no stale graph left by set_mask
    orig_before = {k: v.detach().clone() for k, v in model.state_dict().items() if k.endswith("_orig")}

    losses = train(model)

    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0]
    state = model.state_dict()
    for key in attn:  # gradients reached the attention weights (no stale copy cut them off)
        assert not torch.equal(state[key + "_orig"], orig_before[key + "_orig"]), key
    for key, w in effective_weights(model).items():
        assert torch.count_nonzero(w[masks[key] == 0]) == 0, key
        assert torch.equal(get_masks(model)[key], masks[key])  # training never changes a mask

    reference = dense_reference(model, build(1))
    for grad in (False, True):  # eval fast path (no grad) and the regular path
        assert torch.allclose(outputs(model, grad), outputs(reference, grad), atol=1e-5)
    # the tensors attention computed with are the masked ones (what the forward pre-hooks recomputed)
    for name, module, pname in masked_modules(model):
        assert torch.equal(getattr(module, pname).detach(), effective_weights(model)[f"{name}.{pname}"]), (name, pname)

    finalized = prunekit.finalize(prunekit.clone_model(model))
    assert not any(k.endswith(("_orig", "_mask")) for k in finalized.state_dict())
    assert not any(isinstance(h, RefreshMasks) for m in finalized.modules() for h in m._forward_pre_hooks.values())
    assert torch.allclose(outputs(finalized), outputs(reference), atol=1e-5)
    assert torch.equal(finalized.encoder.layers[1].self_attn.in_proj_weight == 0,
                       masks["encoder.layers.1.self_attn.in_proj_weight"] == 0)

    path = prunekit.save(model, tmp_path / "m.safetensors")
    assert set(tree(tmp_path)) == {"m.safetensors"}
    loaded = prunekit.load(path, build(2))
    assert torch.allclose(outputs(loaded), outputs(model), atol=1e-6)
    assert get_masks(loaded).keys() == masks.keys()
    assert all(torch.equal(get_masks(loaded)[k], masks[k]) for k in masks)
    losses = train(loaded, steps=3)  # a loaded masked transformer trains as well
    assert all(torch.isfinite(torch.tensor(losses)))
    for key, w in effective_weights(loaded).items():
        assert torch.count_nonzero(w[masks[key] == 0]) == 0, key


def test_report_lists_in_proj_weight():
    model = prunekit.prune(build(), X, ratio=0.8)
    rows = {r["name"]: r for r in sparsity_report(model)}
    row = rows["encoder.layers.0.self_attn.in_proj_weight"]
    mask = model.encoder.layers[0].self_attn.in_proj_weight_mask
    assert row["masked"] and row["type"] == "MultiheadAttention" and row["param"] == "in_proj_weight"
    assert row["numel"] == 3 * 32 * 32 and row["nonzero"] == int(mask.sum())
    assert rows["encoder.layers.0.self_attn.out_proj"]["masked"]
    total = sum(r["numel"] for r in rows.values())
    assert prunekit.unstructured.global_sparsity(model) == pytest.approx(
        1 - sum(r["nonzero"] for r in rows.values()) / total)


def test_attention_with_separate_q_k_v_weights_is_pruned_and_trains():
    torch.manual_seed(0)

    class KV(nn.Module):
        def __init__(self):
            super().__init__()
            self.attn = nn.MultiheadAttention(32, 4, kdim=16, vdim=8, batch_first=True)
            self.head = nn.Linear(32, 3)

        def forward(self, q, k, v):
            return self.head(self.attn(q, k, v, need_weights=False)[0].mean(1))

    inputs = (torch.randn(4, 5, 32), torch.randn(4, 6, 16), torch.randn(4, 6, 8))
    model = prunekit.prune(KV(), inputs, ratio=0.7, scope="local")
    masks = get_masks(model)
    assert {"attn.q_proj_weight", "attn.k_proj_weight", "attn.v_proj_weight", "attn.out_proj.weight"} <= set(masks)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(3):
        loss = model(*inputs).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    for key, w in effective_weights(model).items():
        assert torch.count_nonzero(w[masks[key] == 0]) == 0, key
    reference = dense_reference(model, KV())
    with torch.no_grad():
        assert torch.allclose(model.eval()(*inputs), reference.eval()(*inputs), atol=1e-5)


def test_include_types_linear_leaves_in_proj_alone():
    model = prunekit.prune(build(), X, ratio=0.5, include_types=["Linear"])
    assert not any(k.endswith("in_proj_weight") for k in get_masks(model))
    model = prunekit.prune(build(), X, ratio=0.5, include=["encoder.layers.0.self_attn.in_proj_weight"])
    assert list(get_masks(model)) == ["encoder.layers.0.self_attn.in_proj_weight"]
