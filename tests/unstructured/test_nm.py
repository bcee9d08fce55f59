"""N:M patterns: valid masks (at most N non-zero of every M along the input dimension) for every weight criterion,
on transformer-like models; bad patterns are ConfigErrors naming the problem; a recipe section validates."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import yaml
from torch import nn

import prunekit
from prunekit.errors import ConfigError
from prunekit.recipe import from_dict, load_recipe
from prunekit.spec import PruneSpec
from prunekit.unstructured import get_masks
from zoo import ZOO

CRITERIA = ["l1", "l2", "random", "taylor", "wanda", "sparsegpt"]


def assert_n_m(weight: torch.Tensor, mask: torch.Tensor, n: int, m: int, axis: int = 1, where: str = ""):
    """Every M consecutive entries along ``axis`` hold at most N kept weights, exactly N where nothing was dead."""
    groups = mask.movedim(axis, -1).reshape(-1, m)
    assert torch.all(groups.sum(1) == n), where
    nonzero = (weight * mask).movedim(axis, -1).reshape(-1, m).ne(0).sum(1)
    assert torch.all(nonzero <= n), where


def calib_for(x, classes):
    g = torch.Generator().manual_seed(5)
    return [(x, torch.randint(0, classes, (x.shape[0],), generator=g))]


def loss(outputs, targets):
    out = outputs if outputs.dim() == 2 else outputs.mean(1)
    return F.cross_entropy(out, targets % out.shape[-1])


@pytest.mark.parametrize("criterion", CRITERIA)
def test_2_4_on_every_weight_of_a_transformer_encoder_layer(criterion):
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 4, 32, batch_first=True).eval()
    x = torch.randn(3, 5, 16)
    pruned = prunekit.prune(layer, x, criterion=criterion, pattern="2:4", calibration=calib_for(x, 16), loss_fn=loss)
    masks = get_masks(pruned)
    assert set(masks) == {"self_attn.in_proj_weight", "self_attn.out_proj.weight", "linear1.weight", "linear2.weight"}
    for key, mask in masks.items():
        module = pruned.get_submodule(key.rpartition(".")[0])
        assert_n_m(getattr(module, key.rpartition(".")[2]).detach(), mask, 2, 4, where=key)
    with torch.no_grad():  # masks hold inside the fused parents; finalize keeps the function
        torch.testing.assert_close(pruned(x), prunekit.finalize(pruned)(x), rtol=0, atol=0)


ATTENTION_ZOO = [n for n in ZOO.names() if "attention" in ZOO.get(n).tags]


@pytest.mark.parametrize("criterion", ["l1", "wanda", "sparsegpt"])
@pytest.mark.parametrize("name", ATTENTION_ZOO)
def test_1_4_on_every_linear_of_the_zoo_transformers(name, criterion):
    entry = ZOO.get(name)
    model, x = entry.build().eval(), entry.example_inputs()
    pruned = prunekit.prune(model, x, criterion=criterion, pattern="1:4", include_types=["Linear", "MultiheadAttention"],
                            calibration=[x])
    masks = get_masks(pruned)
    linears = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    assert linears and all(f"{n}.weight" in masks for n in linears)
    for key, mask in masks.items():
        assert_n_m(torch.ones_like(mask), mask, 1, 4, where=f"{name} {key}")
        assert float((mask == 0).float().mean()) == 0.75


def test_conv_groups_run_along_in_channels_at_each_kernel_position():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(8, 4, 3, padding=1))
    x = torch.randn(2, 8, 5, 5)
    for criterion in ("l1", "wanda", "sparsegpt"):
        pruned = prunekit.prune(model, x, criterion=criterion, pattern="2:4", calibration=[x])
        mask = get_masks(pruned)["0.weight"]
        assert_n_m(pruned[0].weight.detach(), mask, 2, 4, axis=1, where=criterion)
    with pytest.raises(ConfigError, match=r"'0.weight'.*has 3 there, not a multiple of 4"):
        prunekit.prune(nn.Sequential(nn.Conv2d(3, 4, 3)), None, pattern="2:4")  # 3 in_channels (27 = 3*3*3)


def test_a_second_pattern_pruning_never_revives():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 6))
    first = prunekit.prune(model, None, ratio=0.6, scope="local")
    dead = get_masks(first)["0.weight"] == 0
    second = get_masks(prunekit.prune(first, None, pattern="2:4"))["0.weight"]
    assert torch.all(second[dead] == 0)
    assert torch.all(second.reshape(-1, 4).sum(1) <= 2)


@pytest.mark.parametrize("fields,message", [
    ({"pattern": "4:2"}, r"1 <= N < M.*did you mean '2:4'"),
    ({"pattern": "0:4"}, r"1 <= N < M"),
    ({"pattern": "2-4"}, r"'N:M' string"),
    ({"pattern": "2:3"}, r"'0.weight' \(shape \(4, 8\)\) has 8 there, not a multiple of 3"),
    ({"pattern": "2:4", "ratio": 0.7}, r"fixes the sparsity at 0.5; ratio=0.7 contradicts it"),
    ({"pattern": "2:4", "threshold": 0.1}, r"threshold=0.1 contradicts it"),
    ({"pattern": "2:4", "scope": "row"}, r"scope='row' does not apply with a pattern"),
    ({"pattern": "2:4", "layer_ratios": {"0": 0.3}}, r"layer_ratios=.* does not apply with a pattern"),
    ({"pattern": "2:4", "granularity": "channel"}, r"pattern='2:4' is an N:M weight-sparsity pattern.*granularity='weight'"),
    ({"scope": "row", "granularity": "channel"}, r"'row' is weight pruning only"),
])
def test_bad_patterns_are_config_errors(fields, message):
    with pytest.raises(ConfigError, match=message):
        prunekit.prune(nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2)), torch.randn(2, 8), **fields)


def test_a_pattern_implies_its_ratio():
    model = nn.Sequential(nn.Linear(8, 4))
    for fields in ({"pattern": "1:4"}, {"pattern": "1:4", "ratio": 0.75}):
        mask = get_masks(prunekit.prune(model, None, **fields))["0.weight"]
        assert int(mask.sum()) == 8


def test_a_recipe_prune_section_with_wanda_and_2_4_validates(tmp_path):
    path = tmp_path / "recipe.yaml"
    path.write_text('prune:\n  granularity: weight\n  criterion: wanda\n  pattern: "2:4"\n  calibration_batches: 2\n')
    section = load_recipe(path)["prune"]
    spec = from_dict(PruneSpec, section, "prune")
    assert (spec.criterion, spec.pattern, spec.calibration_batches) == ("wanda", "2:4", 2)
    assert spec.part().scope == "row"
    with pytest.raises(ConfigError, match="N < M"):
        from_dict(PruneSpec, yaml.safe_load('{criterion: wanda, pattern: "4:2"}'), "prune")
