"""search: / analyze: stages and ``prunekit analyze`` end to end on digits, with independent reloads."""
import json

import pytest
import yaml

import prunekit
from prunekit.cli.analyze import analysis_recipe
from prunekit.cli.main import main
from prunekit.recipe import run_recipe
from prunekit.unstructured import global_sparsity

BASE = {"seed": 0, "data": {"name": "digits", "layout": "flat"}, "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
        "train": {"epochs": 4, "lr": 0.003}, "measure": {"latency": False}, "report": {"sparse_checkpoint": False}}


def test_search_stage_bisection(tmp_path):
    recipe = {**BASE, "output": str(tmp_path),
              "search": {"max_accuracy_drop": 2.0, "max_probes": 4, "hi": 0.95, "finetune": {"epochs": 1}}}
    res = run_recipe(recipe)
    search = json.loads((tmp_path / "results.json").read_text())["search"]
    assert 1 <= len(search["probes"]) <= 4
    ratios = [p["ratio"] for p in search["probes"]]
    assert ratios[0] == pytest.approx(0.95) and len(set(ratios)) == len(ratios)  # bisection starts at hi, never repeats
    assert all(0.0 < r <= 0.95 for r in ratios)
    model = prunekit.load(tmp_path / "model.safetensors")
    if search["best"] is None:
        assert global_sparsity(model) == 0.0
    else:
        assert global_sparsity(model) == pytest.approx(search["ratio"], abs=0.01)
        assert search["best"]["drop_points"] <= 2.0
    assert all({"ratio", "accuracy", "ok", "nonzero_params", "nonzero_macs"} <= set(p) for p in search["probes"])
    assert all(p["latency_ms"] > 0 for p in search["probes"])  # every probe is timed by default
    assert "Budget search" in (tmp_path / "report.html").read_text()
    assert next(r for r in res["stages"] if r["stage"] == "search")["probes"] == len(search["probes"])


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
