"""Unstructured pruning against hand-checked tensors: exact counts per scope, threshold, overrides, iteration."""
import pytest
import torch
from torch import nn

import prunekit
from prunekit.unstructured import finalize, get_masks, global_sparsity, sparsity_report


def two_layer(w1, w2):
    m = nn.Sequential(nn.Linear(w1.shape[1], w1.shape[0], bias=False), nn.Linear(w2.shape[1], w2.shape[0], bias=False))
    with torch.no_grad():
        m[0].weight.copy_(w1)
        m[1].weight.copy_(w2)
    return m


W1 = torch.tensor([[1.0, -2.0], [3.0, -4.0]])  # |w|: 1 2 3 4
W2 = torch.tensor([[0.5, 10.0], [-20.0, 0.1]])  # |w|: .5 10 20 .1


def test_global_ranks_across_layers():
    m = prunekit.prune(two_layer(W1, W2), torch.randn(1, 2), ratio=0.5, scope="global")
    # 8 weights, remove 4 smallest |w| overall: 0.1, 0.5, 1, 2
    assert torch.equal(m[0].weight_mask, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert torch.equal(m[1].weight_mask, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))


def test_local_removes_same_fraction_per_layer():
    m = prunekit.prune(two_layer(W1, W2), torch.randn(1, 2), ratio=0.5, scope="local")
    assert torch.equal(m[0].weight_mask, torch.tensor([[0.0, 0.0], [1.0, 1.0]]))
    assert torch.equal(m[1].weight_mask, torch.tensor([[0.0, 1.0], [1.0, 0.0]]))
    m = prunekit.prune(two_layer(W1, W2), None, ratio=0.25, scope="local")
    assert [r["nonzero"] for r in sparsity_report(m)] == [3, 3]
    # global at 25% removes 0.1 and 0.5 from layer 2 only
    g = prunekit.prune(two_layer(W1, W2), None, ratio=0.25, scope="global")
    assert [r["nonzero"] for r in sparsity_report(g)] == [4, 2]


def test_threshold_keeps_strictly_greater():
    m = prunekit.prune(two_layer(W1, W2), None, threshold=2.0, ratio=None)
    kept0 = (m[0].weight != 0)
    assert torch.equal(kept0, W1.abs() > 2.0)
    assert torch.equal(m[1].weight != 0, W2.abs() > 2.0)


def test_layer_override_and_exclude():
    m = prunekit.prune(two_layer(W1, W2), None, ratio=0.5, layer_ratios={"1": 0.75}, exclude=["0"])
    assert not hasattr(m[0], "weight_mask")
    assert int(m[1].weight_mask.sum()) == 1 and m[1].weight[1, 0] == -20.0


def test_copy_by_default_and_inplace():
    orig = two_layer(W1, W2)
    pruned = prunekit.prune(orig, None, ratio=0.5)
    assert not hasattr(orig[0], "weight_mask") and torch.equal(orig[0].weight, W1)
    same = prunekit.prune(orig, None, ratio=0.5, inplace=True)
    assert same is orig and hasattr(orig[0], "weight_mask")
    assert torch.equal(pruned[1].weight, orig[1].weight)


def test_iterative_pruning_never_revives_and_counts_remaining():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 10))
    p1 = prunekit.prune(net, torch.randn(2, 20), ratio=0.5)
    dead1 = {k: m == 0 for k, m in get_masks(p1).items()}
    with torch.no_grad():  # make the dead weights' stored values huge: they must still stay dead
        p1[0].weight_orig[dead1["0.weight"]] *= 1000
    p2 = prunekit.prune(p1, None, ratio=0.5)
    for k, m in get_masks(p2).items():
        assert torch.all(m[dead1[k]] == 0)
    total = 20 * 30 + 30 * 10
    alive1 = total - round(0.5 * total)
    assert global_sparsity(p2) == pytest.approx(1 - (alive1 - round(0.5 * alive1)) / total)
    p3 = prunekit.prune(p1, None, ratio=0.8, relative_to="total")
    assert global_sparsity(p3) == pytest.approx(0.8, abs=1e-3)


def test_masks_survive_optimizer_steps():
    torch.manual_seed(0)
    net = prunekit.prune(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4)), None, ratio=0.7)
    masks = get_masks(net)
    opt = torch.optim.Adam(net.parameters(), lr=0.1, weight_decay=0.1)
    for _ in range(5):
        loss = net(torch.randn(32, 8)).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    net(torch.randn(1, 8))
    for name, mask in masks.items():
        module = net.get_submodule(name.rsplit(".", 1)[0])
        assert torch.all(module.weight[mask == 0] == 0)
    finalize(net)
    assert not get_masks(net) and all(torch.all(net.get_submodule(n.rsplit(".", 1)[0]).weight[m == 0] == 0)
                                      for n, m in masks.items())


def test_taylor_equals_hand_computation():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(3, 2, bias=False))
    batches = [(torch.randn(4, 3), torch.randint(0, 2, (4,))) for _ in range(3)]
    loss_fn = nn.functional.cross_entropy
    expected = torch.zeros(2, 3)
    w = net[0].weight.detach().clone()
    for x, y in batches:
        wr = w.clone().requires_grad_(True)
        loss_fn(x @ wr.t(), y).backward()
        expected += (w * wr.grad).abs()
    expected /= len(batches)
    from prunekit.importance import create_criterion
    from prunekit.unstructured.pruner import _calibrate

    crit = create_criterion("taylor")
    _calibrate(net, [("0", net[0])], crit, batches, loss_fn, 10)
    assert torch.allclose(crit.weight_scores("0.weight", w), expected, atol=1e-7)
    pruned = prunekit.prune(net, None, criterion="taylor", ratio=0.5, calibration=batches, loss_fn=loss_fn)
    kept = pruned[0].weight_mask.bool()
    assert expected[kept].min() >= expected[~kept].max()


def test_custom_criterion_callable():
    m = prunekit.prune(two_layer(W1, W2), None, ratio=0.25, criterion=lambda name, w: -w.abs())
    # negated magnitude: the two largest |w| (20, 10) go
    assert int((m[1].weight == 0).sum()) == 2 and torch.all(m[0].weight != 0)


def test_apply_masks_on_attention_keeps_masks_under_training():
    """get_masks -> apply_masks on a fresh nn.MultiheadAttention model: out_proj (read functionally) stays masked."""
    from prunekit.unstructured import apply_masks, effective

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.TransformerEncoderLayer(8, 2, 16, dropout=0.0, batch_first=True), nn.Flatten(),
                             nn.Linear(8 * 3, 2))

    x = torch.randn(4, 3, 8)
    masks = get_masks(prunekit.prune(build(), x, ratio=0.6))
    assert "0.self_attn.in_proj_weight" in masks and "0.self_attn.out_proj.weight" in masks
    model = apply_masks(build(), masks)
    start = model[0].self_attn.out_proj.weight_orig.detach().clone()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    for _ in range(3):  # a stale out_proj.weight would fail the second backward
        loss = model(x).pow(2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert not torch.equal(model[0].self_attn.out_proj.weight_orig, start)  # its gradient got through
    for key, mask in masks.items():
        mod_name, _, pname = key.rpartition(".")
        assert torch.count_nonzero(effective(model.get_submodule(mod_name), pname)[mask == 0]) == 0
    dense = finalize(prunekit.clone_model(model))
    with torch.no_grad():
        assert torch.allclose(model.eval()(x), dense.eval()(x), atol=1e-6)
