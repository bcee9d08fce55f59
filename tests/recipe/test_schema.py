"""Recipe validation: unknown keys and wrong types are errors that name the key and the allowed values."""
import pytest

from prunekit.errors import ConfigError
from prunekit.recipe import from_dict, load_recipe
from prunekit.recipe.stages.builtin import FinetuneConfig
from prunekit.spec import PruneSpec
from prunekit.recipe.runner import plan_stages


def test_unknown_top_level_key_lists_allowed():
    with pytest.raises(ConfigError, match=r"unknown recipe key 'prunning'.*allowed top-level keys: .*prune"):
        load_recipe({"prunning": {}})


def test_unknown_nested_key_names_path():
    with pytest.raises(ConfigError, match=r"'prune.ration'.*allowed keys here: .*ratio"):
        plan_stages({"prune": {"ration": 0.5}})


@pytest.mark.parametrize("section,value,pattern", [
    ({"ratio": "half"}, None, r"'prune.ratio' must be a number, got 'half'"),
    ({"scope": "everywhere"}, None, r"'prune.scope' = 'everywhere' is not allowed; choose one of 'global', 'local'"),
    ({"granularity": "kernel"}, None, r"choose one of 'weight', 'channel', 'block', 'input'"),
    ({"ratio": 1.2}, None, r"'prune': ratio must be a number in \[0, 1\)"),
    ({"exclude": 3}, None, r"exclude takes module patterns"),  # one pattern or a list of them (as keywords)
    ({"granularity": "block", "round_to": 8}, None, r"round_to=8 is not used by granularity='block'"),
])
def test_wrong_values(section, value, pattern):
    with pytest.raises(ConfigError, match=pattern):
        from_dict(PruneSpec, section, "prune")


def test_nested_dataclass_and_types():
    cfg = from_dict(FinetuneConfig, {"epochs": 3, "lr": 1, "distill": {"temperature": 2}}, "finetune")
    assert cfg.lr == 1.0 and isinstance(cfg.lr, float) and cfg.distill.temperature == 2.0 and cfg.distill.alpha == 0.5
    with pytest.raises(ConfigError, match=r"'finetune.epochs' must be an integer, got 2.5"):
        from_dict(FinetuneConfig, {"epochs": 2.5}, "finetune")
    with pytest.raises(ConfigError, match=r"'finetune.distill.alpah'"):
        from_dict(FinetuneConfig, {"distill": {"alpah": 0.1}}, "finetune")
    with pytest.raises(ConfigError, match=r"distill.alpha must be in \[0, 1\]"):
        from_dict(FinetuneConfig, {"distill": {"alpha": 3}}, "finetune")


def test_overrides_parse_yaml_values(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("prune: {ratio: 0.5}\nfinetune: {epochs: 1}\n")
    recipe = load_recipe(path, ["prune.ratio=0.9", "prune.exclude=[a, b]", "finetune.distill.alpha=0.3"])
    assert recipe["prune"] == {"ratio": 0.9, "exclude": ["a", "b"]}
    assert recipe["finetune"]["distill"] == {"alpha": 0.3}
    with pytest.raises(ConfigError, match="key=value"):
        load_recipe(path, ["prune.ratio"])


def test_stage_order_independent_of_yaml_order():
    stages = plan_stages({"finetune": {}, "prune": {}, "train": {}})
    assert [s.key for s, _ in stages] == ["train", "prune", "finetune"]


def test_bad_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("prune: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_recipe(bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_recipe(tmp_path / "nope.yaml")
