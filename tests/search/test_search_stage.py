"""search: / analyze: stages and ``prunekit analyze`` end to end on digits, with independent reloads."""
import json

import pytest
import torch
import yaml
from torch import nn

import prunekit
from prunekit.cli.analyze import analysis_recipe
from prunekit.cli.main import main
from prunekit.data import load_data
from prunekit.data.config import DataConfig
from prunekit.recipe import from_dict, run_recipe
from prunekit.train import evaluate
from prunekit.unstructured import get_masks, global_sparsity

BASE = {"seed": 0, "data": {"name": "digits", "layout": "flat"}, "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
        "train": {"epochs": 4, "lr": 0.003}, "measure": {"latency": False}, "report": {"sparse_checkpoint": False}}


def _val_accuracy(model, results):
    """Validation accuracy of ``model`` on the run's own validation split, reloaded independently."""
    data = load_data(from_dict(DataConfig, results["recipe"]["data"], "data"))
    return evaluate(model, data.x_val, data.y_val, num_classes=data.num_classes)["accuracy"]


def _n_weights(model):
    return sum(m.weight.numel() for m in model.modules() if isinstance(m, nn.Linear))


def test_search_stage_bisection(tmp_path):
    budget, hi = 2.0, 0.95
    recipe = {**BASE, "output": str(tmp_path),
              "search": {"max_accuracy_drop": budget, "max_probes": 4, "hi": hi, "finetune": {"epochs": 1}}}
    res = run_recipe(recipe)
    results = json.loads((tmp_path / "results.json").read_text())
    search = results["search"]
    probes = search["probes"]
    assert len(probes) == 4  # hi fails (below), then tol=0.01 needs more halvings than max_probes allows
    # the baseline is the trained, unpruned model's validation accuracy (the train stage's checkpoint, reloaded)
    trained = prunekit.load(tmp_path / "stages" / "01-train.safetensors")
    baseline = _val_accuracy(trained, results)
    assert search["baseline"]["val_accuracy"] == pytest.approx(baseline, abs=1e-12)
    # each verdict is the budget rule on the recorded accuracy, and the ratios follow bisection from that verdict
    good, bad = 0.0, None
    for k, p in enumerate(probes):
        assert p["ok"] == ((baseline - p["accuracy"]) * 100 <= budget)
        assert p["drop_points"] == pytest.approx((baseline - p["accuracy"]) * 100)
        assert p["ratio"] == pytest.approx(hi if k == 0 else (good + bad) / 2)
        if k == 0:
            bad = hi
        elif p["ok"]:
            good = p["ratio"]
        else:
            bad = p["ratio"]
    assert not probes[0]["ok"]  # 95% of a 32-unit MLP's weights is far beyond a 2-point budget
    feasible = [p for p in probes if p["ok"]]
    assert feasible, "this seeded run has a feasible probe; the infeasible case is the next test"
    best = max(feasible, key=lambda p: p["ratio"])
    assert search["ratio"] == best["ratio"] and search["best"]["ratio"] == best["ratio"]
    # the saved model is the winning probe's: its masks remove round(ratio * n) weights (relative to the total),
    # its non-zero count and its validation accuracy are the probe's
    model = prunekit.load(tmp_path / "model.safetensors")
    masks = get_masks(model)
    assert sum(int((m == 0).sum()) for m in masks.values()) == round(best["ratio"] * _n_weights(model))
    dense = prunekit.finalize(prunekit.clone_model(model))
    assert sum(int(torch.count_nonzero(p)) for p in dense.parameters()) == best["nonzero_params"]
    assert _val_accuracy(model, results) == pytest.approx(best["accuracy"], abs=1e-12)
    assert all({"ratio", "accuracy", "ok", "nonzero_params", "nonzero_macs"} <= set(p) for p in probes)
    assert all(p["latency_ms"] > 0 for p in probes)  # every probe is timed by default
    assert "Budget search" in (tmp_path / "report.html").read_text()
    assert next(r for r in res["stages"] if r["stage"] == "search")["probes"] == len(probes)
    # each probe's one-epoch recovery fine-tune feeds the report's curves, in probe order, after the training epochs
    assert [r["stage"] for r in res["history"]] == ["train"] * 4 + ["search"] * len(probes)


def test_search_stage_without_a_feasible_ratio_keeps_the_trained_model(tmp_path):
    recipe = {**BASE, "output": str(tmp_path), "report": {"html": False, "sparse_checkpoint": False},
              "search": {"max_accuracy_drop": 2.0, "max_probes": 1, "hi": 0.95, "finetune": {"epochs": 1}}}
    run_recipe(recipe)
    results = json.loads((tmp_path / "results.json").read_text())
    search = results["search"]
    assert [p["ok"] for p in search["probes"]] == [False] and search["best"] is None and search["ratio"] == 0.0
    trained = prunekit.load(tmp_path / "stages" / "01-train.safetensors")
    model = prunekit.load(tmp_path / "model.safetensors")
    assert global_sparsity(model) == 0.0 and not get_masks(model)
    saved, ref = model.state_dict(), trained.state_dict()
    assert saved.keys() == ref.keys() and all(torch.equal(saved[k], ref[k]) for k in ref)  # the unpruned weights


def test_analysis_recipe_keeps_only_pre_pruning_stages():
    kept, dropped = analysis_recipe({**BASE, "prune": {"ratio": 0.5}, "finetune": {}, "regularize": {}})
    assert set(dropped) == {"prune", "finetune"} and "regularize" in kept and kept["analyze"] == {}


def test_analyze_cli(tmp_path, capsys):
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({**BASE, "prune": {"ratio": 0.9}}))
    out = tmp_path / "an"
    assert main(["analyze", str(path), "-q", "-o", str(out), "--set", "analyze.ratios=[0.5,0.9]",
                 "--set", "analyze.pareto_ratios=[0.5,0.9]"]) == 0
    printed = capsys.readouterr().out
    assert "rank" in printed and "Pareto front" in printed
    res = json.loads((out / "results.json").read_text())
    an = res["analysis"]
    assert set(an["sensitivity"]["curves"]) == {"features.1", "classifier"}
    for curve in an["sensitivity"]["curves"].values():
        assert [c["ratio"] for c in curve] == [0.5, 0.9]
    assert len(an["histograms"]) == 2
    assert [p["ratio"] for p in an["pareto"]["points"]] == [0.0, 0.5, 0.9]
    hist = next(iter(an["histograms"].values()))
    assert sum(hist["counts"]) == hist["numel"]
    assert res["after"]["nonzero_params"] == res["before"]["nonzero_params"]  # analysis prunes nothing for good
    assert "Layer analysis" in (out / "report.html").read_text()
