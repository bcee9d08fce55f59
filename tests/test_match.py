"""The one rule for "which modules" (prunekit.match), and every option that names modules following it.

The expectations are written out by hand for a small nested model, then weight pruning (which layers get
masks), the regularisers (which tensors they act on) and leaf_modules (which modules fx keeps whole) are
checked to select exactly what ``match.matching`` says, restricted to the layers each one acts on.
"""
import pytest
import torch
from torch import nn

import prunekit
from prunekit import match
from prunekit.errors import ConfigError, PruningError
from prunekit.graph.capture import capture
from prunekit.train.regularize import L1, BatchNormL1, GroupLasso
from prunekit.unstructured import get_masks


class Block(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        return torch.relu(self.bn(self.conv(x))) + x


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), Block(), Block())
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(self.pool(self.features(x)).flatten(1))))


def net():
    torch.manual_seed(0)
    return Net()


X = torch.randn(2, 3, 8, 8)
ALL = ["features", "features.0", "features.1", "features.2", "features.2.conv", "features.2.bn",
       "features.3", "features.3.conv", "features.3.bn", "pool", "fc1", "fc2"]
BLOCK2 = ["features.2", "features.2.conv", "features.2.bn"]
BLOCK3 = ["features.3", "features.3.conv", "features.3.bn"]

# pattern (or a function of the model giving it) -> the modules it selects, written out by hand
EXPECTED = {
    "exact leaf": ("features.0", ["features.0"]),
    "exact container covers its children": ("features.2", BLOCK2),
    "prefix": ("features", ALL[:9]),
    "glob spans dots": ("features.*", ALL[1:9]),
    "glob on the last part": ("*.conv", ["features.2.conv", "features.3.conv"]),
    "glob on top-level names": ("fc?", ["fc1", "fc2"]),
    "class name of a torch layer": ("Conv2d", ["features.0", "features.2.conv", "features.3.conv"]),
    "class name of a user module covers its children": ("Block", BLOCK2 + BLOCK3),
    "type": (nn.BatchNorm2d, ["features.2.bn", "features.3.bn"]),
    "user type covers its children": (Block, BLOCK2 + BLOCK3),
    "module object covers its children": (lambda m: m.features[3], BLOCK3),
    "module object of a leaf": (lambda m: m.fc2, ["fc2"]),
}


def pattern_of(spec, model):
    return spec(model) if callable(spec) and not isinstance(spec, type) else spec


@pytest.mark.parametrize("case", sorted(EXPECTED))
def test_matching_follows_the_rule(case):
    model = net()
    spec, expected = EXPECTED[case]
    pat = pattern_of(spec, model)
    assert match.matching(model, [pat]) == expected
    match.check_patterns(model, "include", [pat])  # it names something: no error
    assert [n for n in ALL if match.selects(model, n, [pat])] == expected


def test_a_prefix_is_whole_dotted_parts():
    model = net()
    assert not match.name_matches("features.0", "feat")
    assert not match.name_matches("features", "feat")
    assert match.name_matches("features.0", "features")
    assert match.matching(model, ["feat"]) == []
    with pytest.raises(PruningError, match="include pattern 'feat' matches no module of Net"):
        match.check_patterns(model, "include", ["feat"])


def test_naming_and_selecting_differ_only_below_class_names_types_and_objects():
    model = net()
    conv = model.features[2].conv
    assert not match.module_matches("features.2.conv", conv, "Block")  # the conv is no Block...
    assert not match.module_matches("features.2.conv", conv, model.features[2])
    assert match.selects(model, "features.2.conv", ["Block"])  # ...but it is inside one
    assert match.selects(model, "features.2.conv", [model.features[2]])
    assert match.module_matches("features.2.conv", conv, "features.2")  # a string's prefix form names it already
    assert match.module_matches("features.2.conv", None, "*.conv") and not match.module_matches("x", None, nn.Conv2d)


def test_several_patterns_select_the_union_in_model_order():
    model = net()
    assert match.matching(model, ["fc2", nn.BatchNorm2d, "features.0"]) == [
        "features.0", "features.2.bn", "features.3.bn", "fc2"]
    assert match.matching(model, []) == []


def test_unmatched_patterns_raise_naming_option_pattern_near_names_and_the_rule():
    model = net()
    with pytest.raises(PruningError) as info:
        match.check_patterns(model, "exclude", ["featurs.0"])
    text = str(info.value)
    assert "exclude pattern 'featurs.0' matches no module of Net" in text
    assert "did you mean 'features.0'?" in text and match.PATTERN_HELP in text
    with pytest.raises(PruningError, match="include pattern 'Conv2D' matches no module .*did you mean 'Conv2d'"):
        match.check_patterns(model, "include", ["Conv2D"])
    with pytest.raises(PruningError, match="ignore pattern type LSTM matches no module of Net"):
        match.check_patterns(model, "ignore", [nn.LSTM])
    with pytest.raises(ConfigError, match="leaf_modules lists a Linear object that is not a submodule of Net"):
        match.check_patterns(model, "leaf_modules", [nn.Linear(2, 2)], error=ConfigError)
    with pytest.raises(PruningError, match="lists the model itself"):
        match.check_patterns(model, "include", [model])


def test_as_patterns_and_to_names():
    model = net()
    assert match.as_patterns(None, "include") == []
    assert match.as_patterns("features", "include") == ["features"]  # one string is one pattern
    assert match.as_patterns(nn.Linear, "include") == [nn.Linear]
    assert match.as_patterns(("a", nn.Linear), "include") == ["a", nn.Linear]
    for bad in (3, {"features": 1}, ["features", 3]):
        with pytest.raises(ConfigError, match="include takes module patterns"):
            match.as_patterns(bad, "include")
    named = match.to_names(model, [model.features[2], nn.Linear, "fc1"])
    assert named == ["features.2", nn.Linear, "fc1"]
    assert match.matching(model, named[:1]) == match.matching(model, [model.features[2]])  # the same selection


def test_first_match_wins_in_mapping_order():
    model = net()
    ratios = {"fc1": 0.1, nn.Linear: 0.2, "Block": 0.3}
    assert match.first_match("fc1", model.fc1, ratios) == ("fc1", 0.1)
    assert match.first_match("fc2", model.fc2, ratios) == (nn.Linear, 0.2)
    assert match.first_match("features.2.conv", model.features[2].conv, ratios) == (None, None)  # itself only
    assert match.first_match("features.2.conv", None, ratios, model=model) == ("Block", 0.3)  # the whole rule


# --- every option that names modules selects what match.matching says --------------------------------------

WEIGHT_LAYERS = (nn.Linear, nn.Conv2d)
CONSISTENCY = ["features.2", "features", "features.*", "*.conv", "fc?", "Conv2d", "Block", Block, nn.Linear,
               lambda m: m.features[3], "fc1", nn.BatchNorm2d, "*.bn", "pool"]


def selected(model, pat, types):
    modules = dict(model.named_modules())
    return [n for n in match.matching(model, [pat]) if isinstance(modules[n], types)]


def weight_pruned(model, prune=prunekit.prune, **kw):
    """Names of the layers whose mask removed something."""
    masked = prune(model, X, **{"ratio": 0.5, **kw})
    return sorted(k.rpartition(".")[0] for k, mask in get_masks(masked).items() if not bool(mask.all()))


def case_id(spec) -> str:
    return "module object" if callable(spec) and not isinstance(spec, type) else getattr(spec, "__name__", str(spec))


@pytest.mark.parametrize("spec", CONSISTENCY, ids=case_id)
def test_weight_pruning_selects_what_matching_says(spec):
    model = net()
    pat = pattern_of(spec, model)
    expected = sorted(selected(model, pat, WEIGHT_LAYERS))
    if expected:
        assert weight_pruned(model, include=pat) == expected
        everything = sorted(selected(model, "*", WEIGHT_LAYERS))
        assert weight_pruned(model, exclude=[pat]) == sorted(set(everything) - set(expected))
        assert weight_pruned(model, prunekit.unstructured.prune_weights, ratio=0.0, layer_ratios={pat: 0.5}) == expected
    else:
        with pytest.raises(PruningError, match="but no prunable layer"):
            weight_pruned(model, include=pat)


def test_class_name_layer_ratios_through_prunekit_prune():
    assert weight_pruned(net(), ratio=0.0, layer_ratios={"Block": 0.5}) == ["features.2.conv", "features.3.conv"]


def test_layer_ratios_first_pattern_wins_with_types_and_objects():
    model = net()
    masked = prunekit.prune(model, X, ratio=0.0, layer_ratios={model.fc1: 0.75, nn.Linear: 0.25})
    removed = {k: float(1 - m.mean()) for k, m in get_masks(masked).items()}
    assert removed["fc1.weight"] == pytest.approx(0.75) and removed["fc2.weight"] == pytest.approx(0.25)
    assert removed["features.0.weight"] == 0.0


@pytest.mark.parametrize("spec", CONSISTENCY, ids=case_id)
def test_regularizers_act_on_what_matching_says(spec):
    model = net()
    pat = pattern_of(spec, model)
    for reg_type, types in ((L1, WEIGHT_LAYERS), (GroupLasso, WEIGHT_LAYERS), (BatchNormL1, (nn.BatchNorm2d,))):
        expected = selected(model, pat, types)
        everything = selected(model, "*", types)
        assert [n for n, _ in reg_type(exclude=[pat]).tensors(model)] == [n for n in everything if n not in expected]
        if expected:
            assert [n for n, _ in reg_type(include=[pat]).tensors(model)] == expected
            assert float(reg_type(strength=1.0, include=pat)(model).detach()) > 0
        else:
            with pytest.raises(ConfigError, match="include pattern .* selects no layer it acts on"):
                reg_type(include=[pat]).tensors(model)


@pytest.mark.parametrize("spec", CONSISTENCY, ids=case_id)
def test_leaf_modules_keep_whole_what_matching_says(spec):
    """fx keeps a module whole exactly when the pattern selects it (containers: Sequential, Block)."""
    model = net()
    pat = pattern_of(spec, model)
    captured = capture(model, X, leaf_modules=[pat])
    targets = {str(n.target) for n in captured.gm.graph.nodes if n.op == "call_module"}
    whole = {n for n in ALL if any(n == t or n.startswith(t + ".") for t in targets)}
    containers = {n for n, m in model.named_modules() if n and len(m._modules)}
    assert whole & containers == set(match.matching(model, [pat])) & containers
    assert targets <= set(ALL)


def test_every_option_refuses_a_pattern_that_names_nothing():
    model = net()
    for kw in ({"include": ["feat"]}, {"exclude": ["feat"]}, {"layer_ratios": {"feat": 0.5}}):
        with pytest.raises(PruningError, match=f"{next(iter(kw))} pattern 'feat' matches no"):
            prunekit.unstructured.prune_weights(model, X, **kw)
    with pytest.raises(ConfigError, match="l1 regularizer include pattern 'feat' matches no module of Net"):
        L1(include=["feat"])(model)
    with pytest.raises(ConfigError, match="bn_l1 regularizer exclude pattern type LSTM matches no module"):
        BatchNormL1(exclude=[nn.LSTM])(model)
    with pytest.raises(PruningError, match="leaf_modules pattern 'feat' matches no module of Net"):
        capture(model, X, leaf_modules=["feat"])
    with pytest.raises(PruningError, match="not a submodule"):  # another model's module
        prunekit.prune(model, X, include=[net().fc1])
