"""PruneSpec: one typed request behind prunekit.prune, prunekit.plan and a recipe's prune: section.

The option table below is written by hand from the documentation (the reference); the library derives
its own from PruneSpec's field declarations, and the two must agree.
"""
from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

import prunekit
from prunekit import ConfigError, PruneSpec
from prunekit.api import PRUNE_OPTIONS
from prunekit.typed import from_dict

COMMON = {"criterion", "ratio", "seed", "calibration_batches"}
DOCUMENTED = {
    "weight": COMMON | {"threshold", "scope", "relative_to", "layer_ratios", "include", "exclude", "include_types",
                        "pattern", "blocks", "max_memory", "block_inputs"},
    "channel": COMMON | {"scope", "layer_ratios", "include", "exclude", "include_types", "ignore", "freeze",
                         "macs_target", "latency_target", "latency_batch", "latency_threads", "latency_checks",
                         "latency_allocation", "round_to", "layer_floor", "uniform", "reduction", "normalize", "leaf_modules", "tracer", "blocks",
                         "max_memory", "block_inputs"},
    "block": COMMON | {"include", "exclude", "ignore", "freeze", "leaf_modules", "tracer"},
    "input": COMMON | {"leaf_modules", "tracer"},
}
# a value different from the default, for every field
SAMPLE = {"criterion": "l2", "ratio": 0.3, "seed": 3, "calibration_batches": 2, "threshold": 0.1, "scope": "local",
          "relative_to": "total", "layer_ratios": {"0": 0.2}, "include": ["0"], "exclude": ["0"],
          "include_types": ["Conv2d"], "ignore": ["0"], "freeze": ["0"], "macs_target": 0.5,
          "latency_target": 0.5, "latency_batch": 8, "latency_threads": 1, "latency_checks": 1, "latency_allocation": "measured",
          "round_to": 4,
          "layer_floor": 0.2, "uniform": True, "reduction": "max", "normalize": "max", "leaf_modules": ["0"], "tracer": "fx",
          "pattern": "2:4", "blocks": "auto", "max_memory": "1GB", "block_inputs": "dense"}


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()


X = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(0))


def test_the_option_table_is_the_documented_one():
    assert {g: set(o) for g, o in PRUNE_OPTIONS.items()} == DOCUMENTED
    assert set(SAMPLE) == {f.name for f in dataclasses.fields(PruneSpec)} - {"granularity"}


@pytest.mark.parametrize("granularity,option", [(g, o) for g in DOCUMENTED for o in sorted(SAMPLE)
                                                if o not in DOCUMENTED[g]])
def test_an_option_the_granularity_does_not_use_is_refused(granularity, option):
    m = model()
    with pytest.raises(ConfigError, match=option):
        prunekit.prune(m, X, granularity=granularity, **{option: SAMPLE[option]})
    with pytest.raises(ConfigError, match=option):
        PruneSpec(granularity=granularity, **{option: SAMPLE[option]}).validate()
    with pytest.raises(ConfigError, match=option):
        from_dict(PruneSpec, {"granularity": granularity, option: SAMPLE[option]}, "prune")


@pytest.mark.parametrize("granularity", sorted(DOCUMENTED))
def test_an_unknown_option_is_refused_listing_the_allowed_ones(granularity):
    with pytest.raises(ConfigError) as info:
        prunekit.prune(model(), X, granularity=granularity, ratoi=0.5)
    text = str(info.value)
    assert "'ratoi'" in text and "did you mean 'ratio'" in text
    assert all(o in text for o in DOCUMENTED[granularity])
    with pytest.raises(ConfigError, match="'ratoi'"):  # plan takes the same options
        prunekit.plan(model(), X, granularity=granularity, ratoi=0.5)


@pytest.mark.parametrize("criterion", ["l1", "taylor", "fpgm"])
def test_block_pruning_refuses_criteria_it_does_not_implement(criterion):
    with pytest.raises(ConfigError, match="residual_norm"):
        prunekit.prune(model(), X, granularity="block", criterion=criterion)


def test_keywords_spec_and_recipe_section_are_one_request():
    keys = {"granularity": "channel", "ratio": 0.5, "scope": "local", "round_to": 4}
    by_keywords = prunekit.prune(model(), X, **keys)
    by_spec = prunekit.prune(model(), X, PruneSpec(**keys))
    by_recipe = prunekit.prune(model(), X, from_dict(PruneSpec, dict(keys), "prune"))
    for other in (by_spec, by_recipe):
        for (k, a), (_, b) in zip(by_keywords.state_dict().items(), other.state_dict().items()):
            assert torch.equal(a, b), k
    assert from_dict(PruneSpec, {}, "prune") == PruneSpec()  # the recipe's defaults are the keyword defaults
    # keywords replace the spec's fields
    spec = PruneSpec(granularity="channel", ratio=0.25)
    assert PruneSpec.from_fields(spec, ratio=0.5) == dataclasses.replace(spec, ratio=0.5)


def test_channel_and_weight_pruning_share_the_defaults():
    spec = PruneSpec()
    assert spec.criterion_or_default == "l1" and spec.scope is None and spec.scope_or_default == "global"
    assert spec.part().scope == "global" and dataclasses.replace(spec, criterion="wanda").part().scope == "row"
    assert dataclasses.replace(spec, criterion="sparsegpt").part().scope == "local"
    assert dataclasses.replace(spec, granularity="channel").part().criterion == "l1"
    assert dataclasses.replace(spec, granularity="channel").part().scope == "global"
    assert dataclasses.replace(spec, granularity="block").part().criterion == "residual_norm"
    # the library's weight pruner with no options is prunekit.prune with no options
    from prunekit.unstructured import get_masks, prune_weights

    a, b = get_masks(prune_weights(model(), X)), get_masks(prunekit.prune(model(), X))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_ignoring_the_head_keeps_its_outputs_but_still_prunes_its_inputs():
    """Torch-Pruning's meaning of ignore; freeze keeps every group touching the layer."""
    from zoo import ZOO

    entry = ZOO.get("resnet_basic")
    base, x = entry.build().eval(), entry.example_inputs()
    head = [n for n, m in base.named_modules() if isinstance(m, nn.Linear)][-1]
    params = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    ignored = prunekit.prune(base, x, granularity="channel", ratio=0.5, ignore=[head])
    frozen = prunekit.prune(base, x, granularity="channel", ratio=0.5, freeze=[head])
    free = prunekit.prune(base, x, granularity="channel", ratio=0.5)
    h0, hi, hf = (m.get_submodule(head) for m in (base, ignored, frozen))
    assert hi.out_features == hf.out_features == h0.out_features
    assert hf.in_features == h0.in_features  # frozen: untouched
    assert hi.in_features < h0.in_features  # ignored: read fewer channels
    assert params(ignored) == params(free)  # the head's outputs are the model's: kept either way
    assert params(frozen) > params(ignored)


def test_layer_ratios_with_a_dotted_prefix_work_for_weights_and_channels_alike():
    """The issue's example: layer_ratios={"features": ...} used to work for weights and fail for channels."""
    torch.manual_seed(0)
    net = nn.Sequential()
    net.add_module("features", nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1),
                                             nn.ReLU()))
    net.add_module("pool", nn.AdaptiveAvgPool2d(1))
    net.add_module("flat", nn.Flatten())
    net.add_module("head", nn.Linear(8, 4))
    net.eval()
    slim = prunekit.prune(net, X, granularity="channel", ratio=0.0, scope="local", layer_ratios={"features": 0.5})
    assert [slim.features[0].out_channels, slim.features[2].out_channels] == [4, 4]
    masked = prunekit.prune(net, X, granularity="weight", ratio=0.0, scope="local", layer_ratios={"features": 0.5})
    from prunekit.unstructured import get_masks

    masks = get_masks(masked)
    assert set(masks) >= {"features.0.weight", "features.2.weight"}
    for key in ("features.0.weight", "features.2.weight"):
        assert int((masks[key] == 0).sum()) == masks[key].numel() // 2
    assert "head.weight" not in masks or int((masks["head.weight"] == 0).sum()) == 0


def test_a_class_name_or_type_naming_a_container_reaches_the_layers_inside():
    class Blk(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(8, 8, 3, padding=1)

        def forward(self, x):
            return torch.relu(self.conv(x))

    def build():
        torch.manual_seed(0)
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), Blk(), nn.Conv2d(8, 8, 3, padding=1),
                             nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4)).eval()

    for pattern in (Blk, "Blk", "2"):
        slim = prunekit.prune(build(), X, granularity="channel", ratio=0.5, scope="local", freeze=[pattern])
        assert slim[2].conv.in_channels == slim[2].conv.out_channels == 8, pattern  # untouched
        assert slim[3].out_channels == 4, pattern  # elsewhere pruning goes on
