"""A recipe's latency_target prune: results.json keeps the latency report and report.html shows it, the widths
in both being the pruned model's own."""
import json

import prunekit
from prunekit.models import create_model
from prunekit.recipe import run_recipe
from prunekit.report.sections.latency import latency_section

RECIPE = {"seed": 0, "data": {"name": "digits", "layout": "image", "normalize": "unit"},
          "model": {"name": "digits_cnn"}, "train": {"epochs": 1},
          "prune": {"granularity": "channel", "latency_target": 0.7, "latency_threads": 1, "latency_checks": 1},
          "measure": {"latency": False}, "report": {"html": True, "sparse_checkpoint": False}}


def test_recipe_records_and_reports_the_latency_prune(tmp_path, monkeypatch):
    monkeypatch.setenv("PRUNEKIT_CACHE_DIR", str(tmp_path / "cache"))
    results = run_recipe(RECIPE, output=str(tmp_path / "run"))
    lat = json.loads((tmp_path / "run" / "results.json").read_text())["latency"]
    assert lat["target"] == 0.7 and lat["threads"] == 1 and 1 <= len(lat["checks"]) <= 2
    assert lat["measured_fraction"] > 0 and lat["cache_file"].startswith(str(tmp_path / "cache"))
    model = prunekit.load(results["artifacts"]["checkpoint"], create_model("digits_cnn"))  # the pruned model
    html = (tmp_path / "run" / "report.html").read_text()
    assert "<h2>Latency target</h2>" in html and "Allocation checked on the pruned model" in html
    # every layer row is a layer of the pruned model at its kept widths, printed as dense→kept
    assert lat["layers"]
    for row in lat["layers"].values():
        layer = model.get_submodule(row["module"])
        shape = {"in": getattr(layer, "in_channels", getattr(layer, "in_features", None)),
                 "out": getattr(layer, "out_channels", getattr(layer, "out_features", None)),
                 "chan": getattr(layer, "num_features", None)}
        for axis, (dense, kept) in row["widths"].items():
            assert kept == shape[axis] and kept <= dense, (row, shape)
            assert (f"{axis} {dense}→{kept}" if dense != kept else f"{axis} {dense}") in html

def test_latency_section_is_absent_without_a_latency_prune():
    assert latency_section({"stages": []}, {}) is None
