"""The reduction report section (table, variance curve, feature maps) and the reduce: stage inside run_recipe."""
import re

import torch
import torch.nn.functional as F

import prunekit
from prunekit.data import load_data
from prunekit.modelutils import clone_model
from prunekit.models import create_model
from prunekit.recipe import run_recipe
from prunekit.recipe.stages import RunContext
from prunekit.recipe.stages.reduce import finish_reduce, run_reduce
from prunekit.reduce import ReduceConfig
from prunekit.report.sections.reduce import reduce_section
from prunekit.report.base import REPORT_SECTIONS
from prunekit.train import FitConfig, fit


def test_report_section_shows_table_curve_and_feature_maps(tmp_path):
    torch.manual_seed(0)
    data = load_data(name="breast_cancer", layout="flat")
    kwargs = {"in_features": 30, "hidden": [8], "num_classes": 2}
    ctx = RunContext(model=create_model("mlp", **kwargs), data=data, out_dir=tmp_path, recipe={},
                     example_inputs=data.example_inputs(1), loss_fn=F.cross_entropy,
                     model_spec={"name": "mlp", "kwargs": kwargs})
    run_reduce(ctx, ReduceConfig(n_components=3, sweep=[2], train=FitConfig(epochs=1), latency=False,
                                 picture_points=60))
    fit(ctx.model, ctx.data, FitConfig(epochs=1))
    ctx.teacher = clone_model(ctx.model)
    ctx.model = prunekit.prune(ctx.model, ctx.example_inputs, ratio=0.5)
    finish_reduce(ctx)
    assert "reduce" in REPORT_SECTIONS
    html = reduce_section(ctx.results, {})
    assert html.count("data:image/png;base64,") == 2  # variance curve + feature maps
    body = html[html.index("<tbody>"):html.index("</tbody>")]
    assert body.count("<tr>") == len(ctx.results["reduce"]["rows"]) == 4  # no-reduction, input-prune-3, pca-2, pca-3
    assert "chosen" in body and "Folded into the first layer" in html
    assert reduce_section({}, {}) is None


def test_reduce_stage_runs_inside_a_recipe(tmp_path):
    recipe = {
        "data": {"name": "digits", "layout": "image", "normalize": "unit"},
        "model": {"name": "mlp", "kwargs": {"hidden": [32]}},
        "reduce": {"method": "pca", "n_components": 12, "compare": False, "latency": False, "picture_points": 50},
        "train": {"epochs": 3, "lr": 0.003},
        "prune": {"granularity": "weight", "ratio": 0.5},
        "measure": {"latency": False},
        "report": {"html": True, "sparse_checkpoint": False},
    }
    results = run_recipe(recipe, output=str(tmp_path))
    assert results["reduce"]["n_components"] == 12 and results["reduce"]["in_features_raw"] == 64
    assert [row["stage"] for row in results["stages"]][:2] == ["reduce", "train"]
    # the checkpoint is the reduced-input model and records in_features=12 so it reloads without help
    model = prunekit.load(tmp_path / "model.safetensors")
    assert model.features[1].in_features == 12
    assert re.search(r"<h2>Dimensionality reduction</h2>", (tmp_path / "report.html").read_text())
