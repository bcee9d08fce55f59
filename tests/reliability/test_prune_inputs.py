"""Bad pruning requests: unknown / unused options, patterns matching nothing, wrong example inputs, tracer="fx".

Each fault case asserts the prunekit error type, a message naming the cause, that the user's model is
unchanged and that nothing was written. The request checks (``check_prune_request``) raise the same errors
without pruning; behaviour cases (block include / ignore, tracer auto) check what is actually pruned.
"""
from __future__ import annotations

import logging

import pytest
import torch
from torch import nn

import prunekit
from prunekit.api import PRUNE_OPTIONS, check_prune_request
from prunekit.errors import ConfigError, InputError, PruningError, TraceError
from prunekit.structured import describe_groups, get_plan
from prunekit.api import prune
from prunekit.unstructured.select import select_params

from .conftest import assert_fault, tree

GRANULARITIES = ("weight", "channel", "block", "input")


class Res(nn.Module):
    """``x + fc(x)``: an identity-skip residual block."""

    def __init__(self, d: int):
        super().__init__()
        self.fc = nn.Linear(d, d)

    def forward(self, x):
        return x + self.fc(x)


class ResMLP(nn.Module):
    """Prunable by every granularity: weights, channels, residual blocks, input features of ``inp``."""

    def __init__(self):
        super().__init__()
        self.inp = nn.Linear(6, 8)
        self.blocks = nn.Sequential(Res(8), Res(8), Res(8))
        self.head = nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.blocks(torch.relu(self.inp(x))))


class Branchy(ResMLP):
    """Python control flow in the top forward: torch.fx cannot trace it, torch.export (non-strict) can."""

    def forward(self, x):
        if x.dim() == 2:
            x = x * 2.0
        return super().forward(x)


X = torch.randn(4, 6)


def model():
    torch.manual_seed(0)
    return ResMLP()


def snapshot(m: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in m.state_dict().items()}


def assert_unchanged(m: nn.Module, before: dict, tmp_path) -> None:
    after = m.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    assert not any(hasattr(mod, "weight_mask") for mod in m.modules())
    assert tree(tmp_path) == {}


# --- option names --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("typo,meant", [("macs_targte", "macs_target"), ("layer_flor", "layer_floor")])
def test_unknown_option_is_named_with_the_allowed_ones(tmp_path, granularity, typo, meant):
    m = model()
    before = snapshot(m)
    with pytest.raises(ConfigError) as info:
        prunekit.prune(m, X, granularity=granularity, ratio=0.5, **{typo: 0.5})
    message = assert_fault(info, ConfigError, repr(typo), f"did you mean {meant!r}", f"granularity={granularity!r}")
    for allowed in PRUNE_OPTIONS[granularity]:  # the allowed options are listed
        assert allowed in message
    assert_unchanged(m, before, tmp_path)
    with pytest.raises(ConfigError) as again:  # the pre-flight check says the same, without pruning
        check_prune_request(m, X, granularity=granularity, **{typo: 0.5})
    assert str(again.value) == message


def test_channel_pruning_no_longer_swallows_unknown_keywords(tmp_path):
    m = model()
    before = snapshot(m)
    with pytest.raises(ConfigError) as info:
        prune(m, X, ratio=0.5, reductoin="max", granularity="channel", criterion="l2", scope="local")
    assert_fault(info, ConfigError, "prunekit.prune", "'reductoin'", "did you mean 'reduction'")
    assert_unchanged(m, before, tmp_path)


@pytest.mark.parametrize("granularity,option,value", [
    ("weight", "layer_floor", 0.2),
    ("weight", "tracer", "fx"),
    ("weight", "ignore", ["head"]),
    ("input", "freeze", ["inp"]),
    ("channel", "relative_to", "total"),
    ("channel", "threshold", 0.1),
    ("block", "scope", "local"),
    ("block", "macs_target", 0.5),
    ("block", "layer_ratios", {"blocks.0": 0.5}),
    ("input", "include", ["inp"]),
    ("input", "round_to", 4),
])
def test_option_the_granularity_does_not_use_is_refused(tmp_path, granularity, option, value):
    m = model()
    before = snapshot(m)
    with pytest.raises(ConfigError) as info:
        prunekit.prune(m, X, granularity=granularity, ratio=0.5, **{option: value})
    assert_fault(info, ConfigError, option, f"granularity={granularity!r}" if option != "threshold" else "threshold",
                 "ratio")  # names the option and lists what the granularity takes
    assert_unchanged(m, before, tmp_path)


def test_unused_options_left_at_their_defaults_are_fine():
    """What a recipe always passes (defaults of options other granularities use) is not an error."""
    for granularity in GRANULARITIES:
        pruned = prunekit.prune(model(), X, granularity=granularity, ratio=0.5, threshold=None, macs_target=None,
                                layer_floor=None, reduction="mean", normalize="mean", leaf_modules=(), tracer="auto",
                                calibration_batches=8, relative_to="remaining", include_types=None, exclude=None)
        assert pruned(X).shape == (4, 3)


# --- name patterns -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", ("weight", "channel", "block"))
@pytest.mark.parametrize("option,pattern,near", [("include", "blok*", "blocks"), ("exclude", "haed", "head")])
def test_pattern_matching_nothing_names_it_and_example_modules(tmp_path, granularity, option, pattern, near):
    m = model()
    before = snapshot(m)
    with pytest.raises(PruningError) as info:
        prunekit.prune(m, X, granularity=granularity, ratio=0.5, **{option: [pattern]})
    assert_fault(info, PruningError, f"{option} pattern {pattern!r} matches no module", f"did you mean {near!r}",
                 "'inp'")  # example module names
    assert_unchanged(m, before, tmp_path)
    with pytest.raises(PruningError, match=f"{option} pattern"):
        check_prune_request(m, None, granularity=granularity, **{option: [pattern]})


@pytest.mark.parametrize("granularity,option,pattern", [
    ("channel", "ignore", "blocks.9"),
    ("block", "ignore", "blocks.9"),
    ("weight", "layer_ratios", {"haed": 0.5}),
    ("channel", "layer_ratios", {"haed": 0.5}),
])
def test_ignore_and_layer_ratio_patterns_matching_nothing(tmp_path, granularity, option, pattern):
    m = model()
    before = snapshot(m)
    with pytest.raises(PruningError) as info:
        prunekit.prune(m, X, granularity=granularity, ratio=0.5, **{option: pattern if isinstance(pattern, dict) else [pattern]})
    name = next(iter(pattern)) if isinstance(pattern, dict) else pattern
    assert_fault(info, PruningError, f"{option} pattern {name!r} matches no")
    assert_unchanged(m, before, tmp_path)


def test_a_single_string_pattern_is_one_pattern_not_its_characters():
    from collections import OrderedDict

    def mlp():
        torch.manual_seed(0)
        return nn.Sequential(OrderedDict(a=nn.Linear(6, 8), r1=nn.ReLU(), b=nn.Linear(8, 8), r2=nn.ReLU(),
                                         c=nn.Linear(8, 8), r3=nn.ReLU(), head=nn.Linear(8, 3)))

    as_string = prunekit.prune(mlp(), X, granularity="channel", ratio=0.5, freeze="head")
    as_list = prunekit.prune(mlp(), X, granularity="channel", ratio=0.5, freeze=["head"])
    widths = lambda m: [m.a.out_features, m.b.out_features, m.c.out_features, m.head.in_features]  # noqa: E731
    assert widths(as_string) == widths(as_list) == [4, 4, 8, 8]  # "head" kept whole (and what feeds it)
    as_string = prunekit.prune(mlp(), X, granularity="channel", ratio=0.5, ignore="head")
    as_list = prunekit.prune(mlp(), X, granularity="channel", ratio=0.5, ignore=["head"])
    assert widths(as_string) == widths(as_list)
    assert as_list.head.out_features == 3 and as_list.head.in_features == as_list.c.out_features < 8  # only the
    # head's outputs are kept: what feeds it is pruned


def test_default_patterns_matching_nothing_only_warn(caplog):
    with caplog.at_level(logging.WARNING, logger="prunekit.unstructured.select"):
        targets = select_params(model(), exclude=["classifier"], defaults=("exclude",))
    assert [t.key for t in targets] == ["inp.weight", "blocks.0.fc.weight", "blocks.1.fc.weight",
                                        "blocks.2.fc.weight", "head.weight"]
    assert "exclude pattern 'classifier' matches no module" in caplog.text
    with pytest.raises(PruningError, match="'classifier'"):
        select_params(model(), exclude=["classifier"])


def test_weight_exclude_pattern_still_excludes_and_globs_keep_their_meaning():
    pruned = prunekit.prune(model(), X, ratio=0.5, exclude=["blocks.*", "head"])
    assert sorted(prunekit.unstructured.get_masks(pruned)) == ["inp.weight"]
    pruned = prunekit.prune(model(), X, ratio=0.5, include=["blocks"])  # a prefix covers the children
    assert sorted(prunekit.unstructured.get_masks(pruned)) == [f"blocks.{i}.fc.weight" for i in range(3)]


# --- example inputs ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("granularity", GRANULARITIES)
@pytest.mark.parametrize("bad,words", [(torch.randn(4, 7), ("Tensor(4, 7)", "4x7 and 6x8")),
                                       (torch.randint(0, 5, (4, 6)), ("Tensor(4, 6):int64", "dtype"))])
def test_wrong_example_input_is_an_input_error_naming_the_shapes(tmp_path, granularity, bad, words):
    m = model().train()
    before = snapshot(m)
    with pytest.raises(InputError) as info:
        prunekit.prune(m, bad, granularity=granularity, ratio=0.5)
    message = assert_fault(info, InputError, "could not run on the example inputs", *words)
    assert "graph" not in message.lower()  # not a trace dump
    assert m.training and all(mod.training for mod in m.modules())  # training flags restored
    assert_unchanged(m, before, tmp_path)
    with pytest.raises(InputError, match="could not run"):
        check_prune_request(m, bad, granularity=granularity)


def test_an_assertion_inside_the_model_is_an_input_error_too(tmp_path):
    class Checked(ResMLP):
        def forward(self, x):
            assert x.shape[-1] == 6, f"expects 6 features, got {x.shape[-1]}"
            return super().forward(x)

    torch.manual_seed(0)
    m = Checked()
    before = snapshot(m)
    for granularity in GRANULARITIES:
        with pytest.raises(InputError) as info:
            prunekit.prune(m, torch.randn(2, 5), granularity=granularity, ratio=0.5)
        assert_fault(info, InputError, "Tensor(2, 5)", "AssertionError", "expects 6 features, got 5")
    assert_unchanged(m, before, tmp_path)


def test_describe_groups_reports_wrong_inputs_and_unknown_ignore_patterns():
    m = model()
    with pytest.raises(InputError, match=r"Tensor\(4, 7\)"):
        describe_groups(m, torch.randn(4, 7))
    with pytest.raises(PruningError, match="ignore pattern 'hed' matches no module"):
        describe_groups(m, X, ignore=["hed"])
    groups = describe_groups(m, X, ignore=["*"])  # leaves nothing prunable: still described, with the reasons
    assert groups and all(g["left_out"] for g in groups if g["kind"] == "group")


# --- tracer --------------------------------------------------------------------------------------------------


def test_tracer_fx_means_fx_and_auto_falls_back_to_export(tmp_path):
    torch.manual_seed(0)
    m = Branchy()
    before = snapshot(m)
    with pytest.raises(TraceError) as info:
        prunekit.prune(m, X, granularity="channel", ratio=0.5, tracer="fx")
    assert_fault(info, TraceError, "torch.fx cannot trace Branchy.forward", "x.dim() == 2", "tracer='fx'")
    assert_unchanged(m, before, tmp_path)
    slim = prunekit.prune(m, X, granularity="channel", ratio=0.5, tracer="auto")  # via torch.export
    assert slim.inp.out_features == 4 and slim.head.in_features == 4
    assert slim(X).shape == (4, 3)


def test_unknown_tracer_is_a_config_error():
    with pytest.raises(ConfigError, match="tracer must be 'auto', 'fx' or 'export', got 'jit'"):
        prunekit.prune(model(), X, granularity="channel", tracer="jit")


# --- block granularity: include / ignore choose the candidate blocks -----------------------------------------


def weakest_first_block():
    m = model()
    with torch.no_grad():  # block 0's branch is zero: it is by far the least important block
        m.blocks[0].fc.weight.zero_()
        m.blocks[0].fc.bias.zero_()
    return m


def test_block_include_and_ignore_restrict_the_candidates():
    assert get_plan(prunekit.prune(weakest_first_block(), X, granularity="block", ratio=0.34))["removed_blocks"] == ["blocks.0"]
    kept = prunekit.prune(weakest_first_block(), X, granularity="block", ratio=0.5, include=["blocks.1", "blocks.2"])
    plan = get_plan(kept)
    assert "blocks.0" not in plan["removed_blocks"] and len(plan["removed_blocks"]) == 1
    assert set(plan["block_scores"]) == {"blocks.1", "blocks.2"}
    # ignoring a module inside a block keeps the whole block (removing it would remove the module)
    kept = prunekit.prune(weakest_first_block(), X, granularity="block", ratio=0.34, ignore=["blocks.0.fc"])
    assert "blocks.0" not in get_plan(kept)["removed_blocks"]


# --- check_prune_request -------------------------------------------------------------------------------------


def test_check_prune_request_validates_without_pruning_or_running():
    class Fails(ResMLP):
        def forward(self, x):
            raise RuntimeError("must not be called")

    m = Fails()
    before = snapshot(m)
    for granularity in GRANULARITIES:
        spec = check_prune_request(m, None, granularity=granularity, ratio=0.5)  # no forward without inputs
        assert (spec.granularity, spec.ratio) == (granularity, 0.5)
    assert all(torch.equal(m.state_dict()[k], v) for k, v in before.items())
    with pytest.raises(InputError, match="must not be called"):
        check_prune_request(m, X)
    with pytest.raises(PruningError, match="ratio"):
        check_prune_request(m, None, ratio=1.5)
    with pytest.raises(PruningError, match="granularity"):
        check_prune_request(m, None, granularity="kernel")
    with pytest.raises(ConfigError, match="unknown criterion"):
        check_prune_request(m, None, granularity="channel", criterion="l3")
    with pytest.raises(PruningError, match="needs data"):
        check_prune_request(m, None, criterion="taylor")
