"""The CLI end to end on digits with short settings; outputs checked against an independent reload."""
import json

import pytest
import torch

import prunekit
from prunekit.cli.main import main
from prunekit.data import load_data
from prunekit.data.config import DataConfig
from prunekit.recipe import from_dict
from prunekit.train import evaluate
from prunekit.unstructured import get_masks, global_sparsity

SHORT = ["--set", "train.epochs=3", "--set", "finetune.epochs=1", "--set", "measure.repeats=2",
         "--set", "measure.warmup=1"]


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "-q", "--output", str(out), *SHORT]) == 0
    printed = capsys.readouterr().out
    for label in ("test accuracy", "macro recall", "macro false-positive rate", "non-zero parameters",
                  "MACs (non-zero)", "bytes on disk (sparse)", "latency batch 1", "latency batch 64"):
        assert label in printed
    results = json.loads((out / "results.json").read_text())
    assert (out / "report.html").stat().st_size > 10_000
    for key in ("params", "nonzero_params", "macs", "nonzero_macs", "size_bytes", "sparse_size_bytes",
                "latency_ms_b1", "latency_ms_b64", "accuracy", "recall_macro", "fpr_macro", "loss"):
        assert key in results["before"] and key in results["after"]
    # reload the checkpoint independently and re-evaluate on the same test split
    model = prunekit.load(out / "model.safetensors")
    assert global_sparsity(model) == pytest.approx(0.8, abs=0.01)
    data = load_data(from_dict(DataConfig, results["recipe"]["data"], "data"))
    again = evaluate(model, data.x_test, data.y_test, num_classes=10)
    assert again["accuracy"] == pytest.approx(results["after"]["accuracy"])
    sparse = prunekit.load(out / "model.sparse.safetensors")
    x = data.x_test[:16]
    assert torch.equal(sparse(x), model(x))
    assert results["after"]["nonzero_params"] < 0.3 * results["before"]["nonzero_params"]


def _weight_layers(model):
    return [(n, m) for n, m in model.named_modules() if isinstance(m, (torch.nn.Linear, torch.nn.Conv2d))]


def _nonzero_params(model):
    """Non-zeros of every parameter of a finalized (mask-free) copy: the count results.json reports."""
    dense = prunekit.finalize(prunekit.clone_model(model))
    assert not get_masks(dense)
    return sum(int(torch.count_nonzero(p)) for p in dense.parameters())


def test_run_recipe_with_custom_model(tmp_path, monkeypatch, capsys):
    """recipes/custom_model.yaml prunes 75% of every layer's weights by magnitude (l2, local); the masks are
    torch.nn.utils.prune.l1_unstructured's on the trained weights, and the saved files agree with each other."""
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    monkeypatch.chdir(root)
    out = tmp_path / "custom"
    rc = main(["run", "recipes/custom_model.yaml", "-q", "--output", str(out), "--set", "train.epochs=2",
               "--set", "finetune.epochs=1", "--set", "measure.latency=false", "--set", "report.html=false"])
    assert rc == 0
    results = json.loads((out / "results.json").read_text())
    prune_cfg = results["recipe"]["prune"]
    assert (prune_cfg["criterion"], prune_cfg["ratio"], prune_cfg["scope"]) == ("l2", 0.75, "local")
    model = prunekit.load(out / "model.safetensors", trust_model_spec=True)  # our own file naming "pkg.mod:factory"
    assert model[0].weight.shape == (64, 30)
    # the oracle: torch's per-layer magnitude pruning at 75% of the trained weights (|w| and w^2 rank alike)
    trained = prunekit.load(out / "stages" / "01-train.safetensors", trust_model_spec=True)
    for _, m in _weight_layers(trained):
        torch.nn.utils.prune.l1_unstructured(m, "weight", amount=0.75)
    reference = {f"{n}.weight": m.weight_mask for n, m in _weight_layers(trained)}
    masks = get_masks(model)
    assert set(masks) == set(reference)
    for key, mask in masks.items():
        assert int((mask == 0).sum()) == round(0.75 * mask.numel())  # exactly the asked-for sparsity, per layer
        assert torch.equal(mask, reference[key])  # and the fine-tune kept the masks chosen after training
    # the reported size and accuracy are the saved checkpoint's
    assert results["after"]["nonzero_params"] == _nonzero_params(model)
    data = load_data(from_dict(DataConfig, results["recipe"]["data"], "data"))
    assert evaluate(model, data.x_test, data.y_test)["accuracy"] == pytest.approx(results["after"]["accuracy"])
    x = data.x_test[:32]
    with torch.no_grad():
        expected = model.eval()(x)
        torch.testing.assert_close(prunekit.finalize(prunekit.clone_model(model)).eval()(x), expected, rtol=0, atol=0)
        sparse = prunekit.load(out / "model.sparse.safetensors", trust_model_spec=True)
        torch.testing.assert_close(sparse.eval()(x), expected, rtol=0, atol=0)


def test_bad_recipe_key_is_a_clean_error(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("prune: {ratio: 0.5, scoep: local}\n")
    assert main(["run", str(recipe), "-q", "--output", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "prune.scoep" in err and "scope" in err and "Traceback" not in err


def test_inspect_lists_layers_and_selection(capsys):
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    assert main(["inspect", str(root / "recipes/digits_weight.yaml")]) == 0
    out = capsys.readouterr().out
    lines = {line.split()[0]: line for line in out.splitlines() if line.startswith(("features.", "classifier."))}
    assert lines["features.0"].rstrip().endswith("no")  # excluded in the recipe
    assert "yes (0.9)" in lines["features.3"] and "yes (0.5)" in lines["classifier.4"]


def test_recipe_starts_from_checkpoint(tmp_path):
    """A recipe with model.checkpoint and no train stage prunes the given weights (plain torch state dict too)."""
    from prunekit.recipe import run_recipe

    data = load_data(name="digits", layout="image", normalize="unit")
    model = prunekit.models.create_model("digits_cnn")
    prunekit.train.fit(model, data, prunekit.train.FitConfig(epochs=4, lr=0.003))
    reference = evaluate(model, data.x_test, data.y_test)["accuracy"]
    torch.save(model.state_dict(), tmp_path / "plain.pt")
    recipe = {"data": {"name": "digits", "layout": "image", "normalize": "unit"},
              "model": {"name": "digits_cnn", "checkpoint": str(tmp_path / "plain.pt")},
              "prune": {"ratio": 0.3}, "measure": {"latency": False}, "report": {"html": False}}
    results = run_recipe(recipe, output=str(tmp_path / "out"))
    assert results["before"]["accuracy"] == pytest.approx(reference)
    pruned = prunekit.load(tmp_path / "out" / "model.safetensors")
    # the defaults (weight, l1, global, 30%) on exactly the checkpoint's weights: torch's global L1 masks
    twin = prunekit.clone_model(model)
    layers = _weight_layers(twin)
    torch.nn.utils.prune.global_unstructured([(m, "weight") for _, m in layers],
                                             pruning_method=torch.nn.utils.prune.L1Unstructured, amount=0.3)
    masks = get_masks(pruned)
    assert set(masks) == {f"{n}.weight" for n, _ in layers}
    for name, m in layers:
        assert torch.equal(masks[f"{name}.weight"], m.weight_mask)
    total = sum(m.weight.numel() for _, m in layers)
    assert sum(int((m == 0).sum()) for m in masks.values()) == round(0.3 * total)
    trained, saved = model.state_dict(), pruned.state_dict()
    for key, value in saved.items():  # nothing but the masks was changed: no fine-tune stage
        if key.endswith("_orig"):  # checkpoints store pruned entries of X_orig as 0 (they cannot come back)
            assert torch.equal(value, trained[key.removesuffix("_orig")] * saved[key.replace("_orig", "_mask")]), key
        elif not key.endswith("_mask"):
            assert torch.equal(value, trained[key]), key
    x = data.x_test[:32]
    with torch.no_grad():
        torch.testing.assert_close(pruned.eval()(x), twin.eval()(x), rtol=0, atol=0)
    assert results["after"]["nonzero_params"] == _nonzero_params(pruned)
    assert results["after"]["accuracy"] == pytest.approx(evaluate(pruned, data.x_test, data.y_test)["accuracy"])


def test_inspect_structured_recipe_prints_groups_and_left_out(capsys):
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    assert main(["inspect", str(root / "recipes/digits_channel.yaml")]) == 0
    out = capsys.readouterr().out
    assert "features.0 (Conv2d out), features.1 (BatchNorm2d out), features.3 (Conv2d in)" in out
    assert "classifier.4: reaches the model output" in out


def test_lottery_ticket_rewind_point_from_train_stage(tmp_path):
    """train.rewind_step=0 keeps the initial weights; schedule.rewind resets survivors to them each round."""
    from prunekit.recipe import run_recipe

    recipe = {"data": {"name": "digits", "layout": "flat", "normalize": "unit"},
              "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
              "train": {"epochs": 2, "rewind_step": 0},
              "schedule": {"kind": "iterative", "target": 0.5, "rounds": 2, "rewind": True,
                           "finetune": {"epochs": 1}},
              "measure": {"latency": False}, "report": {"html": False}}
    results = run_recipe(recipe, output=str(tmp_path / "lt"))
    assert results["after"]["nonzero_params"] < results["before"]["nonzero_params"]
