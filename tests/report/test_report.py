"""report.html is self-contained and shows every section whose data is present; results.json is JSON-safe."""
import copy
import json
import math
import re

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from prunekit.report import REPORT_SECTIONS, figure_to_data_uri, read_results, register_section, to_jsonable, write_report, write_results
from prunekit.report.html import table
from prunekit.report.plots import new_figure

HEADINGS = {"summary": "Summary", "layers": "Per-layer sparsity", "weights": "Weight histograms",
            "history": "Accuracy per epoch", "stages": "Stages", "files": "Files", "recipe": "Recipe"}


def models():
    torch.manual_seed(0)
    before = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    after = copy.deepcopy(before)
    prune.l1_unstructured(after[0], "weight", amount=0.5)
    prune.l1_unstructured(after[4], "weight", amount=0.75)
    return before, after


def full_results():
    before = {"accuracy": 0.95, "recall_macro": 0.94, "fpr_macro": 0.01, "loss": 0.2, "params": 1_234_567,
              "nonzero_params": 1_234_000, "macs": 5_000_000, "nonzero_macs": 4_900_000, "size_bytes": 45_600,
              "sparse_size_bytes": 45_000, "latency_ms_b1": 1.5, "latency_ms_b64": 12.0}
    after = {**before, "accuracy": 0.94, "nonzero_params": 300_000, "sparse_size_bytes": 15_000, "latency_ms_b1": 1.2}
    return {
        "before": before,
        "after": after,
        "history": [{"stage": "finetune", "epoch": e, "val_accuracy": 0.9 + 0.01 * e, "train_loss": 1.0 / e} for e in range(1, 4)],
        "stages": [{"stage": "prune", "sparsity": 0.75}, {"stage": "finetune", "epochs": 3, "val_accuracy": 0.94}],
        "recipe": {"prune": {"criterion": "l1", "ratio": 0.75}, "finetune": {"epochs": 3}},
        "artifacts": {"checkpoint": "/out/model.safetensors"}, "disk_bytes": {"checkpoint": 2_500_000},
        "timings_s": {"prune": 1.25},
    }


def test_report_has_every_section_and_only_embedded_images(tmp_path):
    before, after = models()
    path = write_report(tmp_path, full_results(), models={"before": before, "after": after})
    assert path == tmp_path / "report.html" and path.exists()
    html = path.read_text()
    for heading in HEADINGS.values():
        assert f"<h2>{heading}</h2>" in html
    srcs = re.findall(r'src="([^"]*)"', html)
    assert len(srcs) == 3  # layer bars, histograms, accuracy curve
    assert all(s.startswith("data:image/png;base64,") for s in srcs)
    assert not re.search(r'<link|href="http|src="http|url\(', html)  # no external resources
    # summary: human formats and the after/before ratio
    assert "1.23M" in html and "45.6 KB" in html and "1.5 ms" in html and "0.243×" in html
    assert "-1.00 pp" in html  # accuracy change in percentage points
    assert "model.safetensors" in html and "2.5 MB" in html and "1.25 s" in html
    assert re.findall(r"<h2>(.*?)</h2>", html) == list(HEADINGS.values())  # in page order


def test_sections_skip_quietly_without_data(tmp_path):
    html = write_report(tmp_path, {}).read_text()
    assert "<h2>" not in html
    partial = write_report(tmp_path, {"stages": [{"stage": "prune", "sparsity": 0.5}]}).read_text()
    assert re.findall(r"<h2>(.*?)</h2>", partial) == ["Stages"]


def test_layer_section_from_results_rows_without_models(tmp_path):
    rows = [{"name": "conv", "sparsity": 0.5}, {"name": "fc", "sparsity": 0.9}]
    html = write_report(tmp_path, {"layers": rows}).read_text()
    assert re.findall(r"<h2>(.*?)</h2>", html) == ["Per-layer sparsity"]
    assert "90.0 %" in html and "data:image/png;base64," in html


def test_layer_rows_from_results_skip_norm_layers():
    from prunekit.report.sections.plots import layer_rows

    rows = [{"name": "conv", "type": "Conv2d", "numel": 100, "sparsity": 0.5},
            {"name": "bn", "type": "BatchNorm2d", "numel": 8, "sparsity": 0.0},
            {"name": "ln", "shape": [8], "sparsity": 0.0}]
    got = layer_rows({"layers": rows}, {})
    assert [r["name"] for r in got] == ["conv"] and got[0]["params"] == 100 and got[0]["zeroed"] == 0.5


def test_layer_rows_show_structurally_removed_weights():
    from prunekit.report.sections.plots import layer_rows

    torch.manual_seed(0)
    before = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
    after = nn.Sequential(nn.Linear(8, 3), nn.ReLU(), nn.Linear(3, 2))  # one of 4 hidden units removed
    prune.l1_unstructured(after[0], "weight", amount=0.5)
    rows = {r["name"]: r for r in layer_rows({}, {"before": before, "after": after})}
    assert rows["0"]["removed"] == pytest.approx(0.25) and rows["0"]["zeroed"] == pytest.approx(12 / 32)
    assert rows["2"]["removed"] == pytest.approx(0.25) and rows["2"]["zeroed"] == 0


def test_layer_rows_from_models_match_masks():
    from prunekit.report.sections.plots import layer_rows

    before, after = models()
    rows = {r["name"]: r for r in layer_rows({}, {"before": before, "after": after})}
    assert set(rows) == {"0", "4"}  # BatchNorm's 1-d weight is not a prunable matrix
    assert rows["0"]["sparsity"] == 0.5 and rows["4"]["sparsity"] == 0.75 and rows["4"]["removed"] == 0


def test_registered_section_appears_and_failing_section_does_not_break_report(tmp_path):
    @register_section("test_extra_section", order=99)
    def extra(results, ctx):
        if "extra" not in results:
            return None
        fig, ax = new_figure(3, 2)
        ax.plot([0, 1], [1, 0])
        return f"<section><h2>Extra</h2>{table(results['extra'], ['a', ('b', 'B col')])}<img src=\"{figure_to_data_uri(fig)}\"></section>"

    @REPORT_SECTIONS.register("test_broken_section")
    def broken(results, ctx):
        raise ValueError("boom")

    try:
        html = write_report(tmp_path, {"extra": [{"a": "x<y", "b": 2.5}]}).read_text()
        assert "<h2>Extra</h2>" in html and "x&lt;y" in html and '<th class="num">B col</th>' in html
        assert "could not be drawn" in html and "boom" in html
    finally:
        REPORT_SECTIONS.unregister("test_extra_section")
        REPORT_SECTIONS.unregister("test_broken_section")


def test_table_formats_and_escapes():
    html = table([{"n": 1234567, "s": "<b>", "f": float("nan")}, {"n": 0.123456, "s": "ok"}], ["n", "s", ("f", "F")])
    assert '<th class="num">n</th><th>s</th><th>F</th>' in html  # numeric columns are right-aligned
    assert '<td class="num">1,234,567</td>' in html and '<td class="num">0.1235</td>' in html
    assert "&lt;b&gt;" in html and "<b>" not in html
    assert html.count('<td class="na">—</td>') == 2  # NaN and the missing key


def test_results_json_round_trips_and_converts(tmp_path):
    results = {
        "a": np.float32(1.5), "b": np.int64(7), "c": np.arange(3), "d": torch.tensor([[1.0, 2.0]]),
        "nan": float("nan"), "inf": np.float64("inf"), "nested": {"x": [np.bool_(True), (1, 2)], 3: "k"},
    }
    path = write_results(tmp_path, results)
    assert path == tmp_path / "results.json"
    loaded = json.loads(path.read_text())
    assert loaded == {"a": 1.5, "b": 7, "c": [0, 1, 2], "d": [[1.0, 2.0]], "nan": None, "inf": None,
                      "nested": {"x": [True, [1, 2]], "3": "k"}}
    assert read_results(tmp_path) == loaded
    clean = {"x": 1, "y": [0.25, "s", None], "z": {"w": False}}
    assert to_jsonable(clean) == clean
    assert json.loads(write_results(tmp_path, clean).read_text()) == clean
    assert not math.isnan(to_jsonable(np.float16(0.5)))
