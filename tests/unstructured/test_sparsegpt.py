"""SparseGPT: lower reconstruction error than magnitude pruning, exact sparsity, and layer-by-layer sequencing."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import ConfigError, PruningError
from prunekit.importance.sparsegpt import SparseGPT
from prunekit.unstructured import get_masks
from prunekit.unstructured.sparsegpt import reconstruct


def correlated(tokens: int, features: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    mix = torch.randn(features, features, generator=g) / features ** 0.5 + torch.eye(features)
    return torch.randn(tokens, features, generator=g) @ mix * torch.linspace(0.2, 2.0, features)


def error(weight, pruned_weight, x):
    return float(torch.linalg.norm(x @ weight.T - x @ pruned_weight.T))


def effective(model, key):
    return dict(model.named_modules())[key.rpartition(".")[0]].weight.detach()


@pytest.mark.parametrize("pattern,factor", [(None, 0.75), ("2:4", 0.95)])  # 2:4 leaves the mask less freedom
def test_reconstruction_error_is_below_magnitude_pruning_at_the_same_sparsity(pattern, factor):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32, bias=False))
    x = correlated(512, 64)
    calib = [x[i:i + 128] for i in range(0, 512, 128)]
    w = model[0].weight.detach().clone()
    gpt = prunekit.prune(model, None, criterion="sparsegpt", pattern=pattern, calibration=calib)
    mag = prunekit.prune(model, None, criterion="l1", **({"pattern": pattern} if pattern else {"scope": "local"}))
    gpt_mask, mag_mask = get_masks(gpt)["0.weight"], get_masks(mag)["0.weight"]
    assert int((gpt_mask == 0).sum()) == int((mag_mask == 0).sum()) == 32 * 64 // 2  # exactly the requested sparsity
    assert error(w, effective(gpt, "0.weight"), x) < factor * error(w, effective(mag, "0.weight"), x)
    assert not torch.equal(effective(gpt, "0.weight")[gpt_mask == 1], w[gpt_mask == 1])  # kept weights were updated


def paper_2_4(weight, h, blocksize=128, percdamp=0.01):
    """Algorithm 1 for 2:4, transcribed from the authors' reference code (sparsegpt.py, fasterprune)."""
    w, h = weight.clone().float(), h.clone().float()
    cols = w.shape[1]
    h[range(cols), range(cols)] += percdamp * torch.mean(torch.diag(h))
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        w1, hinv1 = w[:, i1:i2].clone(), hinv[i1:i2, i1:i2]
        q1, err1 = torch.zeros_like(w1), torch.zeros_like(w1)
        mask1 = torch.zeros_like(w1) == 1
        for i in range(i2 - i1):
            col, d = w1[:, i], hinv1[i, i]
            if i % 4 == 0:
                tmp = w1[:, i:i + 4] ** 2 / torch.diag(hinv1)[i:i + 4].reshape(1, -1) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, 2, dim=1, largest=False)[1], True)
            q = col.clone()
            q[mask1[:, i]] = 0
            q1[:, i] = q
            e = (col - q) / d
            w1[:, i:] -= e.unsqueeze(1).matmul(hinv1[i, i:].unsqueeze(0))
            err1[:, i] = e
        w[:, i1:i2] = q1
        w[:, i2:] -= err1.matmul(hinv[i1:i2, i2:])
    return w


def test_2_4_reconstruction_equals_the_reference_algorithm():
    torch.manual_seed(0)
    w, x = torch.randn(12, 32) * 0.1, correlated(200, 32)
    h = hessian(x).float()
    for blocksize in (8, 128):
        got, keep = reconstruct(w, h, nm=(2, 4), blocksize=blocksize)
        torch.testing.assert_close(got, paper_2_4(w, h, blocksize), rtol=1e-5, atol=1e-6)
        assert torch.all(keep.reshape(12, 8, 4).sum(-1) == 2)


def test_a_conv_is_reconstructed_through_its_unfolded_input():
    torch.manual_seed(0)
    conv = nn.Conv2d(8, 6, 3, padding=1, bias=False)
    x = torch.randn(4, 8, 6, 6) + torch.randn(4, 1, 6, 6)  # channels share a component: correlated inputs
    w = conv.weight.detach().clone()
    gpt = prunekit.prune(nn.Sequential(conv), None, criterion="sparsegpt", ratio=0.6, calibration=[x])
    mag = prunekit.prune(nn.Sequential(conv), None, criterion="l1", ratio=0.6, scope="local")
    mask = get_masks(gpt)["0.weight"]
    assert int((mask == 0).sum()) == round(0.6 * mask.numel())
    ref = nn.functional.conv2d(x, w, padding=1)
    err_gpt = torch.linalg.norm(ref - gpt(x).detach())
    err_mag = torch.linalg.norm(ref - mag(x).detach())
    assert err_gpt < err_mag


def hessian(x: torch.Tensor) -> torch.Tensor:
    x = x.double().reshape(-1, x.shape[-1])
    return 2 * x.T @ x / x.shape[0]


def test_the_second_layer_sees_the_first_pruned_layer_outputs():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    calib = [correlated(32, 8, seed=s) for s in (1, 2)]
    x = torch.cat(calib)
    pruned = prunekit.prune(model, None, criterion=SparseGPT(blocksize=4), ratio=0.5, calibration=calib)
    # the same two steps by hand: prune layer 0 on X, then layer 2 on the outputs of the *pruned* layer 0
    w0, keep0 = reconstruct(model[0].weight, hessian(x), remove=64, blocksize=4)
    hidden = torch.relu(x @ w0.T + model[0].bias.detach())
    w2, keep2 = reconstruct(model[2].weight, hessian(hidden), remove=32, blocksize=4)
    masks = get_masks(pruned)
    assert torch.equal(masks["0.weight"], keep0) and torch.equal(masks["2.weight"], keep2)
    torch.testing.assert_close(pruned[0].weight.detach(), w0)
    torch.testing.assert_close(pruned[2].weight.detach(), w2)
    # and that differs from a Hessian of the unpruned layer's outputs
    stale = torch.relu(x @ model[0].weight.detach().T + model[0].bias.detach())
    w2_stale, _ = reconstruct(model[2].weight, hessian(stale), remove=32, blocksize=4)
    assert not torch.allclose(w2_stale, w2)
    # masks plus updated weights: the masked model equals its finalized twin and (orig * mask)
    twin = copy.deepcopy(pruned)
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), prunekit.finalize(twin)(x), rtol=0, atol=0)
        assert torch.equal(pruned[2].weight_orig * pruned[2].weight_mask, pruned[2].weight)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(model[0].weight, model[0].weight.detach())  # the input model is untouched (a copy is pruned)


def test_layer_ratios_and_2_4_with_sparsegpt():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    calib = [torch.randn(16, 8)]
    masks = get_masks(prunekit.prune(model, None, criterion="sparsegpt", ratio=0.5, layer_ratios={"2": 0.25},
                                     calibration=calib))
    assert int((masks["0.weight"] == 0).sum()) == 64 and int((masks["2.weight"] == 0).sum()) == 16


def test_bad_sparsegpt_requests():
    model = nn.Sequential(nn.Linear(8, 8))
    calib = [torch.randn(4, 8)]
    with pytest.raises(ConfigError, match="scope"):
        prunekit.prune(model, None, criterion="sparsegpt", scope="global", calibration=calib)
    with pytest.raises(ConfigError, match="threshold"):
        prunekit.prune(model, None, criterion="sparsegpt", threshold=0.1, ratio=None, calibration=calib)
    with pytest.raises(ConfigError, match="calibration="):
        prunekit.prune(model, None, criterion="sparsegpt")
    with pytest.raises(ConfigError, match="blocksize"):
        SparseGPT(blocksize=0)
    grouped = nn.Sequential(nn.Conv2d(4, 4, 3, groups=2))
    with pytest.raises(PruningError, match=r"'0.weight'.*groups=2"):
        prunekit.prune(grouped, None, criterion="sparsegpt", calibration=[torch.randn(1, 4, 5, 5)])
