"""Tests for benchmarks/bench_reduce.py's helpers: structured goal check, Pareto levels, the channel pruning it uses."""
import importlib.util
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit.api import measure
from prunekit.models import create_model
from prunekit.structured import InputSelectedLinear

BENCH = Path(__file__).resolve().parents[2] / "benchmarks" / "bench_reduce.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("bench_reduce", BENCH)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def row(family, acc, macs, e2e=None, k=784, ratio=0.0):
    return {"family": family, "k": k, "ratio": ratio, "accuracy": acc, "macs": macs,
            "e2e_macs": macs if e2e is None else e2e, "hidden": "", "scope": "ch-local"}


def test_pareto_drops_dominated_points(bench):
    rows = [row("p", 87.0, 100), row("p", 86.0, 50), row("p", 85.0, 60), row("p", 86.0, 70)]
    # (85, 60) is beaten by (86, 50); (86, 70) by (86, 50): only two frontier points, most accurate first.
    assert [(r["accuracy"], r["macs"]) for r in bench.pareto(rows)] == [(87.0, 100), (86.0, 50)]


def test_structured_goal_picks_cheapest_within_tolerance(bench):
    rows = [row("prune-only/ch", 87.0, 1000), row("prune-only/ch", 80.0, 300), row("prune-only/ch", 79.0, 400),
            row("pca+ch", 86.6, 200, e2e=900, k=16), row("pca+ch", 86.4, 100, e2e=600, k=16),  # 86.4 is 0.6 below 87
            row("pca+ch", 79.6, 50, e2e=250, k=16), row("input+ch", 90.0, 500, k=64)]
    goals = bench.structured_goal(rows, tol=0.5)
    assert [g["level"] for g in goals] == [87.0, 80.0]  # (79, 400) is dominated by (80, 300)
    top, low = goals
    assert top["pca_model"]["macs"] == 200 and top["x_pca_model"] == pytest.approx(1000 / 200)
    assert top["pca_e2e"]["e2e_macs"] == 900 and top["x_pca_e2e"] == pytest.approx(1000 / 900)
    assert top["x_input"] == pytest.approx(1000 / 500)
    # at 80: every pca model >= 79.5 qualifies; the cheapest under each accounting is the 79.6 one
    assert low["x_pca_model"] == pytest.approx(300 / 50) and low["x_pca_e2e"] == pytest.approx(300 / 250)


def test_structured_goal_reports_none_when_nothing_is_accurate_enough(bench):
    goals = bench.structured_goal([row("prune-only/ch", 90.0, 100), row("pca+ch", 89.0, 10, k=16)], tol=0.5)
    assert goals[0]["pca_model"] is None and goals[0]["x_pca_model"] is None


def test_channel_pruning_after_input_selection_shrinks_every_hidden_layer(bench):
    """The bench marks InputSelectedLinear as a leaf so its outputs are prunable; executed MACs match the widths."""
    torch.manual_seed(0)
    model = create_model("mlp", in_features=64, hidden=[32, 16], num_classes=10)
    x = torch.randn(1, 64)
    selected = prunekit.prune(model, x, granularity="input", ratio=0.75)  # 16 of 64 inputs kept
    pruned = prunekit.prune(selected, x, granularity="channel", ratio=0.5, scope="local",
                            leaf_modules=[InputSelectedLinear])
    assert bench.hidden_widths(pruned) == "16-16-8-10"
    assert measure(pruned, x)["macs"] == 16 * 16 + 16 * 8 + 8 * 10
    assert pruned(torch.randn(3, 64)).shape == (3, 10)  # still reads raw 64-feature inputs
