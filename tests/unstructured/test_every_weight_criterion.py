"""Every registered criterion, over the registry (a new entry is tested here for free).

Weight criteria (those implementing ``weight_scores``): prunekit.prune removes exactly ``round(ratio * n)``
weights (of all selected weights for ``scope="global"``, of each layer for ``"local"``, of each output row for
``"row"``), each removed weight scores no higher than any kept one, with the scores computed here through the
documented Criterion protocol (calibration: forward + backward per batch, then ``observe``; each layer's inputs
to ``observe_input``), the masked model computes what a copy with the removed weights zeroed by hand computes,
and a second pruning never revives a weight. Reconstructing criteria (sparsegpt) remove exactly the ratio of
every layer, never revive, and the masked model equals its finalized twin. Channel-only criteria are refused
for weight pruning with a clear error.
"""
from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit.errors import PruningError
from prunekit.importance import CRITERIA, Criterion, create_criterion
from prunekit.unstructured import get_masks


def supports(name: str, method: str) -> bool:
    return getattr(type(create_criterion(name)), method) is not getattr(Criterion, method)


def reconstructs(name: str) -> bool:
    return bool(create_criterion(name).reconstructs)


WEIGHT_CRITERIA = [n for n in CRITERIA.names() if supports(n, "weight_scores") and not reconstructs(n)]
RECONSTRUCTING = [n for n in CRITERIA.names() if reconstructs(n)]
CHANNEL_ONLY = [n for n in CRITERIA.names() if not supports(n, "weight_scores") and not reconstructs(n)]


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(10, 16), nn.Tanh(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 4)).eval()


def batches():
    g = torch.Generator().manual_seed(3)
    return [(torch.randn(16, 10, generator=g), torch.randint(0, 4, (16,), generator=g)) for _ in range(3)]


def linears(model):
    return [(f"{n}.weight", m) for n, m in model.named_modules() if isinstance(m, nn.Linear)]


def reference_scores(name, model, calib):
    """Scores by the Criterion protocol, run here: calibration first for data-driven criteria."""
    crit = create_criterion(name)
    layers = linears(model)
    if crit.needs_data:
        crit.reset()
        hooks = [m.register_forward_pre_hook(lambda mod, args, key=key: crit.observe_input(key, args[0].detach()))
                 for key, m in layers] if "inputs" in crit.needs else []
        for x, y in calib:
            model.zero_grad(set_to_none=True)
            F.cross_entropy(model(x), y).backward()
            crit.observe([(key, m.weight) for key, m in layers])
        for h in hooks:
            h.remove()
        model.zero_grad(set_to_none=True)
    return {key: crit.weight_scores(key, m.weight.detach()).float() for key, m in layers}


def prune(model, name, ratio, scope, calib):
    return prunekit.prune(model, None, granularity="weight", criterion=name, ratio=ratio, scope=scope,
                          calibration=calib, loss_fn=F.cross_entropy)


@pytest.mark.parametrize("scope", ["global", "local", "row"])
@pytest.mark.parametrize("name", WEIGHT_CRITERIA)
def test_every_weight_criterion_removes_exactly_the_lowest_scores(name, scope):
    calib, ratio = batches(), 0.6
    model = mlp()
    scores = reference_scores(name, copy.deepcopy(model), calib)
    pruned = prune(model, name, ratio, scope, calib)
    masks = get_masks(pruned)
    assert set(masks) == set(scores)
    if scope == "row":  # every output row is its own comparison group
        scores = {f"{k}[{i}]": s[i] for k, s in scores.items() for i in range(len(s))}
        masks = {f"{k}[{i}]": m[i] for k, m in masks.items() for i in range(len(m))}
    groups = [list(masks)] if scope == "global" else [[k] for k in masks]
    for keys in groups:
        kept = torch.cat([scores[k][masks[k] == 1] for k in keys])
        removed = torch.cat([scores[k][masks[k] == 0] for k in keys])
        assert removed.numel() == round(ratio * (kept.numel() + removed.numel()))
        assert removed.max() <= kept.min()
    # the masked model computes with exactly the kept weights: a hand-zeroed copy of the original agrees
    twin, masks = copy.deepcopy(model), get_masks(pruned)
    with torch.no_grad():
        for key, m in linears(twin):
            m.weight.mul_(masks[key])
    x = calib[0][0]
    with torch.no_grad():
        torch.testing.assert_close(pruned(x), twin(x), rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())  # calibration leaves the input model alone


@pytest.mark.parametrize("name", WEIGHT_CRITERIA)
def test_every_weight_criterion_never_revives_and_counts_the_remaining(name):
    calib = batches()
    # one ranking over the layers where the criterion's scores compare across layers (wanda's do not: inputs of
    # different scales, so a global wanda ranking may empty a layer, which keeps one weight and breaks the count)
    scope = "global" if create_criterion(name).default_scope == "global" else "local"
    first = prune(mlp(), name, 0.5, scope, calib)
    dead = {k: m == 0 for k, m in get_masks(first).items()}
    second = get_masks(prune(first, name, 0.5, scope, calib))
    total = sum(m.numel() for m in second.values())
    alive = total - sum(int(d.sum()) for d in dead.values())
    for key, mask in second.items():
        assert torch.all(mask[dead[key]] == 0)
    assert sum(int((m == 0).sum()) for m in second.values()) == (total - alive) + round(0.5 * alive)


@pytest.mark.parametrize("name", RECONSTRUCTING)
def test_every_reconstructing_criterion_prunes_each_layer_exactly_and_never_revives(name):
    calib, model = batches(), mlp()
    first = prune(model, name, 0.5, None, calib)
    masks = get_masks(first)
    assert set(masks) == {k for k, _ in linears(model)}
    for key, mask in masks.items():
        assert int((mask == 0).sum()) == round(0.5 * mask.numel()), key
        weight = first.get_parameter(key.replace(".weight", ".weight_orig"))
        assert torch.all(weight[mask == 0] == 0)  # the updated weights are exactly zero where masked
    x = calib[0][0]
    with torch.no_grad():
        torch.testing.assert_close(first(x), prunekit.finalize(copy.deepcopy(first))(x), rtol=0, atol=0)
    second = get_masks(prune(first, name, 0.5, None, calib))
    for key, mask in second.items():
        assert torch.all(mask[masks[key] == 0] == 0)
        alive = int(masks[key].sum())
        assert int((mask == 0).sum()) == (mask.numel() - alive) + round(0.5 * alive)


@pytest.mark.parametrize("name", CHANNEL_ONLY)
def test_channel_only_criteria_refuse_weight_pruning(name):
    with pytest.raises(PruningError, match="does not support unstructured"):
        prune(mlp(), name, 0.5, "global", batches())


def test_every_registered_criterion_scores_something():
    assert WEIGHT_CRITERIA and CHANNEL_ONLY  # both kinds exist, so neither parametrisation above is empty
    for name in CRITERIA.names():
        assert supports(name, "weight_scores") or supports(name, "group_scores"), name
