"""Every recipe shipped in recipes/ passes the run's pre-flight checks (keys, options, patterns, model vs data)."""
from pathlib import Path

import pytest

from prunekit import PrunekitError
from prunekit.recipe import check_recipe

RECIPES = sorted((Path(__file__).resolve().parents[2] / "recipes").glob("*.yaml"))
FASHION = Path("/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz")


@pytest.mark.parametrize("path", RECIPES, ids=lambda p: p.stem)
def test_shipped_recipe_passes_preflight(path, monkeypatch):
    monkeypatch.chdir(path.parents[1])  # recipes name plugins and files relative to the repository root
    if "fashion" in path.read_text() and not FASHION.is_file():
        pytest.skip("Fashion-MNIST is not installed (make fashion-mnist)")
    info = check_recipe(str(path))
    assert info["stages"]


def test_preflight_catches_a_typo_and_writes_nothing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's output (runs/digits_weight) is relative: it would land here
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "digits_weight.yaml"
    with pytest.raises(PrunekitError, match="featurs.0"):
        check_recipe(str(recipe), overrides=["prune.exclude=[featurs.0]"])
    assert check_recipe(str(recipe))["stages"] == ["train", "prune", "finetune", "export"]
    assert list(tmp_path.iterdir()) == []


def test_check_plans_a_structured_prune_before_training(tmp_path):
    """A selection that leaves nothing to prune is found by the pre-flight plan, before any training."""
    import prunekit

    recipe = {"data": {"name": "digits", "layout": "image", "normalize": "unit"}, "model": {"name": "digits_cnn"},
              "train": {"epochs": 50}, "prune": {"granularity": "channel", "ratio": 0.5, "freeze": ["features"],
                                                  "exclude": ["classifier"]}}
    with pytest.raises(prunekit.PruningError, match="leaves no prunable channel group"):
        check_recipe(recipe)
    recipe["prune"] = {"granularity": "channel", "ratio": 0.5, "freeze": ["features.0"]}
    assert check_recipe(recipe)["stages"] == ["train", "prune"]
