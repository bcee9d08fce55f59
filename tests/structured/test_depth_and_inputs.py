"""Block (depth) pruning of identity-skip residual blocks, input-feature pruning, TorchScript export, plan round trip."""
from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from prunekit.errors import PruningError
from prunekit.structured import InputSelectedLinear, apply_plan, get_plan
from prunekit.api import prune

from structured_helpers import ZOO, assert_outputs_close, onnx_outputs, outputs, zoo_convnets


def deep_resnet():
    torch.manual_seed(0)
    zc = zoo_convnets
    model = nn.Sequential(zc.conv_bn(3, 8), *[zc.BasicBlock(8, 8) for _ in range(4)], zc.BasicBlock(8, 16, stride=2),
                          zc.classifier(16))
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.running_var, 0.5, 2.0)
    return model.eval(), torch.randn(2, 3, 16, 16)


def test_block_pruning_removes_the_weakest_identity_blocks():
    model, x = deep_resnet()
    with torch.no_grad():
        model[3].conv2[1].weight.mul_(1e-3)  # block 3's residual branch barely changes its input
    small = prune(model, x, granularity="block", ratio=0.5)
    removed = get_plan(small)["removed_blocks"]
    assert len(removed) == 2 and "3" in removed
    assert "5" not in get_plan(small)["block_scores"]  # the strided block has a projection shortcut
    assert all(isinstance(small[int(n)], nn.Identity) for n in removed)
    reference = copy.deepcopy(model)
    with torch.no_grad():
        for n in removed:  # a removed block equals the block with its residual branch zeroed
            for p in reference[int(n)].parameters():
                p.zero_()
    assert_outputs_close(outputs(small, x), outputs(reference, x))
    fresh, _ = deep_resnet()
    fresh = apply_plan(fresh, get_plan(small))
    fresh.load_state_dict(small.state_dict())
    assert_outputs_close(outputs(fresh, x), outputs(small, x), atol=0, rtol=0)


def test_block_pruning_without_residual_blocks_raises():
    entry = ZOO.get("vgg")
    with pytest.raises(PruningError, match="identity skip"):
        prune(entry.build(), entry.example_inputs(), granularity="block")


def test_block_pruning_finds_zoo_residual_blocks():
    found = {"mobilenetv2": ["1", "3"], "resnet_basic": ["1"], "squeeze_excite": ["1"], "preact_resnet": ["1"]}
    for name, blocks in found.items():
        entry = ZOO.get(name)
        small = prune(entry.build().eval(), entry.example_inputs(), granularity="block", ratio=0.5)
        assert sorted(get_plan(small)["block_scores"]) == blocks
        assert len(get_plan(small)["removed_blocks"]) == len(blocks) // 2
        assert [o.shape for o in outputs(small, entry.example_inputs())] == [
            o.shape for o in outputs(entry.build(), entry.example_inputs())]


def test_input_feature_pruning_keeps_strongest_columns_of_first_linear():
    torch.manual_seed(0)
    entry = ZOO.get("mlp")
    model, x = entry.build().eval(), entry.example_inputs()
    small = prune(model, x, granularity="input", criterion="l1", ratio=0.5)
    first = small[0]
    assert isinstance(first, InputSelectedLinear) and first.in_features == 10
    expected = torch.sort(torch.topk(model[0].weight.abs().sum(0), 10).indices).values
    assert torch.equal(first.input_index, expected)
    assert get_plan(small)["input_features"]["keep"] == expected.tolist()
    reference = copy.deepcopy(model)
    with torch.no_grad():
        mask = torch.ones(20, dtype=torch.bool)
        mask[expected] = False
        reference[0].weight[:, mask] = 0.0
    assert_outputs_close(outputs(small, x), outputs(reference, x))
    fresh = apply_plan(entry.build(), get_plan(small))
    fresh.load_state_dict(small.state_dict())
    assert_outputs_close(outputs(fresh, x), outputs(small, x), atol=0, rtol=0)
    assert_outputs_close(tuple(onnx_outputs(small, x)), outputs(small, x))


def test_input_pruning_needs_a_linear_on_the_input():
    entry = ZOO.get("vgg")
    with pytest.raises(PruningError, match="Linear"):
        prune(entry.build(), entry.example_inputs(), granularity="input")


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
@pytest.mark.parametrize("name", ["resnet_basic", "densenet", "bert_like", "mobilenetv2"])
def test_pruned_model_exports_to_torchscript(name):
    torch.manual_seed(0)
    entry = ZOO.get(name)
    small = prune(entry.build().eval(), entry.example_inputs(), ratio=0.5, granularity="channel", criterion="l2", scope="local")
    x = entry.example_inputs()
    scripted = torch.jit.trace(small, x if isinstance(x, tuple) else (x,))
    assert_outputs_close(outputs(scripted, x), outputs(small, x))


def test_pruning_twice_chains_plans():
    torch.manual_seed(0)
    entry = ZOO.get("resnet_bottleneck")
    x = entry.example_inputs()
    once = prune(entry.build().eval(), x, ratio=0.3, granularity="channel", criterion="l2", scope="local")
    twice = prune(once, x, ratio=0.3, granularity="channel", criterion="l2", scope="local")
    assert len(get_plan(twice)["steps"]) == 2
    fresh = apply_plan(entry.build(), copy.deepcopy(get_plan(twice)))
    fresh.load_state_dict(twice.state_dict())
    assert_outputs_close(outputs(fresh, x), outputs(twice, x), atol=0, rtol=0)


def test_dynamo_onnx_exporter_matches_eager():
    torch.manual_seed(0)
    entry = ZOO.get("vit_tiny")
    small = prune(entry.build().eval(), entry.example_inputs(), ratio=0.5, granularity="channel", criterion="l2", scope="local")
    x = entry.example_inputs()
    assert_outputs_close(tuple(onnx_outputs(small, x, dynamo=True)), outputs(small, x))
