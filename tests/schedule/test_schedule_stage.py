"""The schedule: recipe stage end to end on digits; the saved model is reloaded and checked independently."""
import json

import pytest

import prunekit
from prunekit.recipe import run_recipe
from prunekit.unstructured import global_sparsity


def recipe(out, **schedule):
    return {"seed": 0, "output": str(out), "data": {"name": "digits", "layout": "flat"},
            "model": {"name": "mlp", "kwargs": {"hidden": [32]}}, "train": {"epochs": 4, "lr": 0.003},
            "schedule": {"finetune": {"epochs": 1}, **schedule},
            "measure": {"latency": False}, "report": {"sparse_checkpoint": False}}


def test_iterative_schedule_stage_records_rounds_and_saves_the_model(tmp_path):
    res = run_recipe(recipe(tmp_path, kind="iterative", target=0.75, rounds=2, path="linear"))
    sched = json.loads((tmp_path / "results.json").read_text())["schedule"]
    assert [s["target_sparsity"] for s in sched["steps"]] == pytest.approx([0.375, 0.75])
    for s in sched["steps"]:
        assert {"val_accuracy", "params", "nonzero_params", "macs", "nonzero_macs", "step_ratio"} <= set(s)
        assert s["latency_ms"] > 0  # every round is timed by default
    assert sched["stopped"] == "target" and not sched["rolled_back"]
    model = prunekit.load(tmp_path / "model.safetensors")
    assert global_sparsity(model) == pytest.approx(0.75, abs=0.01)
    assert res["after"]["nonzero_params"] < res["before"]["nonzero_params"]
    assert "Pruning schedule" in (tmp_path / "report.html").read_text()
    assert any(r.get("stage") == "schedule" for r in res["history"])  # fine-tune epochs feed the curves


def test_budget_violation_in_a_recipe_rolls_back_and_says_so(tmp_path):
    res = run_recipe(recipe(tmp_path, kind="iterative", target=0.99, rounds=2, path="linear", max_accuracy_drop=0.0,
                            finetune={"epochs": 0}))
    row = next(r for r in res["stages"] if r["stage"] == "schedule")
    assert row["rolled_back"] and row["stopped"] == "budget" and "rolled back" in row["message"]
    kept = row["best_round"]
    model = prunekit.load(tmp_path / "model.safetensors")
    expected = 0.0 if kept == 0 else res["schedule"]["steps"][kept - 1]["target_sparsity"]
    assert global_sparsity(model) == pytest.approx(expected, abs=0.01)


def test_agp_schedule_stage(tmp_path):
    res = run_recipe(recipe(tmp_path, kind="agp", target=0.6, finetune={"epochs": 2},
                            agp={"interval": 5, "end_fraction": 0.5}))
    assert res["schedule"]["kind"] == "agp" and res["schedule"]["steps"][-1]["final"]
    assert global_sparsity(prunekit.load(tmp_path / "model.safetensors")) == pytest.approx(0.6, abs=0.01)
