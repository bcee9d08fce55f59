"""Independent oracle: prunekit's weight masks equal torch.nn.utils.prune's on the same weights.

Global L1 (``scope="global"``) must equal ``prune.global_unstructured(..., pruning_method=prune.L1Unstructured,
amount=r)``; per-layer L1 (``scope="local"``) must equal ``prune.l1_unstructured`` on each layer; pruning twice
with ``relative_to="remaining"`` must equal torch's pruning container applied twice (torch prunes ``amount`` of
the weights still alive). Both sides count ``round(r * n)`` weights.

Documented differences, kept out of the equality tests and checked on their own:

* prunekit keeps a layer's single most important weight where a ratio would remove all of it (torch empties it);
* ties: torch (``topk``) and prunekit (stable sort) may break equal scores differently, so the weights here are
  continuous random floats, and every test first asserts that the magnitudes have no ties.
"""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

import prunekit
from prunekit.unstructured import get_masks

PRUNABLE = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)


def mlp():
    return nn.Sequential(nn.Linear(12, 24), nn.ReLU(), nn.Linear(24, 16), nn.ReLU(), nn.Linear(16, 5))


def cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3),
                         nn.ReLU(), nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(24, 4))


def mixed():
    """Conv1d, ConvTranspose1d and a Linear (weights of different shapes and scales)."""
    return nn.Sequential(nn.Conv1d(2, 8, 3), nn.ReLU(), nn.ConvTranspose1d(8, 6, 3), nn.Flatten(), nn.Linear(60, 3))


MODELS = {
    "mlp": (mlp, lambda: torch.randn(2, 12)),
    "cnn": (cnn, lambda: torch.randn(2, 3, 6, 6)),
    "mixed": (mixed, lambda: torch.randn(2, 2, 10)),
}
RATIOS = [0.1, 0.3, 0.5, 0.75, 0.9]


SCALES = (1.0, 0.8, 1.25)  # per-layer weight scales: global and local rankings differ, no layer is emptied


def build(name, seed=0):
    """The model with continuous N(0, scale^2) weights (layer k gets SCALES[k % 3]) and its example inputs."""
    make, inputs = MODELS[name]
    torch.manual_seed(seed)
    model = make().eval()
    with torch.no_grad():
        for k, (_, m) in enumerate(weight_layers(model)):
            m.weight.copy_(torch.randn_like(m.weight) * SCALES[k % len(SCALES)])
    return model, inputs()


def weight_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, PRUNABLE)]


def assert_no_ties(model):
    w = torch.cat([m.weight.detach().abs().flatten() for _, m in weight_layers(model)])
    assert torch.unique(w).numel() == w.numel(), "the oracle comparison needs weights without tied magnitudes"


def torch_masks(model):
    return {f"{n}.weight": m.weight_mask.detach().clone() for n, m in weight_layers(model) if hasattr(m, "weight_mask")}


def torch_global(model, amount):
    prune.global_unstructured([(m, "weight") for _, m in weight_layers(model)], pruning_method=prune.L1Unstructured,
                              amount=amount)
    return model


def torch_local(model, amount):
    for _, m in weight_layers(model):
        prune.l1_unstructured(m, "weight", amount=amount)
    return model


def assert_same_masks(ours, theirs):
    assert set(ours) == set(theirs)
    for key in theirs:
        assert torch.equal(ours[key], theirs[key]), f"{key}: prunekit and torch.nn.utils.prune masks differ"


def no_empty_layer(masks):
    """The precondition of the equality tests: torch leaves every layer at least one weight."""
    return all(int(m.sum()) > 0 for m in masks.values())


@pytest.mark.parametrize("criterion", ["l1", "l2"])  # per weight, |w| and w^2 rank the same
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_global_l1_equals_torch_global_unstructured(name, ratio, criterion):
    model, x = build(name)
    assert_no_ties(model)
    reference = torch_masks(torch_global(copy.deepcopy(model), ratio))
    assert no_empty_layer(reference)
    ours = prunekit.prune(model, x, granularity="weight", criterion=criterion, ratio=ratio, scope="global")
    assert_same_masks(get_masks(ours), reference)
    total = sum(m.numel() for m in reference.values())
    assert sum(int((m == 0).sum()) for m in reference.values()) == round(ratio * total)  # what both promise
    for key, mask in reference.items():  # the masks are also what the pruned model computes with
        module = ours.get_submodule(key.rpartition(".")[0])
        assert torch.equal(module.weight, module.weight_orig * mask)


@pytest.mark.parametrize("criterion", ["l1", "l2"])
@pytest.mark.parametrize("ratio", RATIOS)
@pytest.mark.parametrize("name", sorted(MODELS))
def test_local_l1_equals_torch_l1_unstructured_per_layer(name, ratio, criterion):
    model, x = build(name)
    assert_no_ties(model)
    reference = torch_masks(torch_local(copy.deepcopy(model), ratio))
    assert no_empty_layer(reference)
    ours = prunekit.prune(model, x, granularity="weight", criterion=criterion, ratio=ratio, scope="local")
    assert_same_masks(get_masks(ours), reference)


@pytest.mark.parametrize("scope", ["global", "local"])
@pytest.mark.parametrize("ratios", [(0.5, 0.5), (0.3, 0.6), (0.7, 0.4), (0.2, 0.2)])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_pruning_twice_of_the_remaining_equals_torch_container_applied_twice(name, ratios, scope):
    model, x = build(name)
    assert_no_ties(model)
    ref = copy.deepcopy(model)
    ours = model
    for r in ratios:
        ref = torch_global(ref, r) if scope == "global" else torch_local(ref, r)
        ours = prunekit.prune(ours, x, granularity="weight", criterion="l1", ratio=r, scope=scope,
                              relative_to="remaining")
    reference = torch_masks(ref)
    assert no_empty_layer(reference)
    # torch stacked the second pass in a PruningContainer on each module
    assert all(isinstance(h, prune.PruningContainer) for _, m in weight_layers(ref) for h in m._forward_pre_hooks.values())
    assert_same_masks(get_masks(ours), reference)


def test_prunekit_keeps_one_weight_where_torch_empties_a_layer():
    """The deliberate difference: a layer whose weights all fall below the global cut keeps its largest one."""
    model, x = build("mlp")
    with torch.no_grad():
        model[4].weight.mul_(1e-3)  # the last layer's weights are now the globally smallest
    assert_no_ties(model)
    n_last = model[4].weight.numel()
    total = sum(m.weight.numel() for _, m in weight_layers(model))
    ratio = (n_last + 20) / total  # remove the whole last layer and 20 more weights
    reference = torch_masks(torch_global(copy.deepcopy(model), ratio))
    assert int(reference["4.weight"].sum()) == 0  # torch empties the layer
    ours = get_masks(prunekit.prune(model, x, granularity="weight", criterion="l1", ratio=ratio, scope="global"))
    expected_last = torch.zeros_like(reference["4.weight"])
    expected_last.view(-1)[model[4].weight.detach().abs().argmax()] = 1.0  # its single most important weight
    assert torch.equal(ours["4.weight"], expected_last)
    for key in ("0.weight", "2.weight"):  # elsewhere exactly torch's masks: nothing else is compensated
        assert torch.equal(ours[key], reference[key])


def test_local_scope_keeps_one_weight_where_torch_empties_every_layer():
    model, x = build("mlp")
    ratio = 0.999  # round(0.999 * n) == n for every layer here
    reference = torch_masks(torch_local(copy.deepcopy(model), ratio))
    assert all(int(m.sum()) == 0 for m in reference.values())
    ours = get_masks(prunekit.prune(model, x, granularity="weight", criterion="l1", ratio=ratio, scope="local"))
    for key, mask in ours.items():
        w = model.get_submodule(key.rpartition(".")[0]).weight.detach().abs()
        expected = torch.zeros_like(mask)
        expected.view(-1)[w.argmax()] = 1.0
        assert torch.equal(mask, expected)
