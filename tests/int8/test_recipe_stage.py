"""The quantize: recipe stage end to end, its pre-flight, its training-only calibration, and its report section."""
import json
from pathlib import Path

import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F

import prunekit
import prunekit.int8
from prunekit.recipe import check_recipe, run_recipe
from prunekit.recipe.stages import STAGES, RunContext
from prunekit.recipe.stages.quantize import QuantizeConfig, run_quantize
from prunekit.report.sections.quantize import quantize_section

RECIPE = {"seed": 0, "data": {"name": "digits", "layout": "image", "normalize": "unit"},
          "model": {"name": "digits_cnn"}, "train": {"epochs": 2},
          "quantize": {"mode": "static", "calibration_batches": 4}, "export": {"formats": ["onnx"]},
          "measure": {"latency": False}, "report": {"html": True, "sparse_checkpoint": False}}


def test_recipe_with_quantize_runs_end_to_end(tmp_path):
    results = run_recipe(RECIPE, output=str(tmp_path))
    assert [r["stage"] for r in results["stages"]] == ["train", "quantize", "export"]
    q = json.loads((tmp_path / "results.json").read_text())["quantize"]
    for key in ("mode", "backend", "bytes", "float32_bytes", "size_ratio", "max_abs_diff", "top1_agreement",
                "test_accuracy", "float_test_accuracy", "latency_ms_b1", "float32_latency_ms_b1"):
        assert q[key] is not None, key
    assert (q["mode"], q["backend"]) == ("static", "onnxruntime")
    assert q["calibration"] == {"split": "train", "batches": 4, "samples": 256}
    path = tmp_path / "model.int8.onnx"
    assert q["bytes"] == path.stat().st_size and q["size_ratio"] < 0.4
    assert abs(q["float32_bytes"] - (tmp_path / "model.onnx").stat().st_size) < 0.05 * q["float32_bytes"]
    assert q["top1_agreement"] >= 0.98 and abs(q["test_accuracy"] - q["float_test_accuracy"]) <= 0.02
    assert results["artifacts"]["int8_onnx"] == str(path)
    ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    assert "<h2>int8 quantization</h2>" in (tmp_path / "report.html").read_text()


def test_preflight_refuses_bad_options_before_training(tmp_path):
    recipe = {**RECIPE, "output": str(tmp_path / "run"), "quantize": {"options": {"per_chanel": True}}}
    with pytest.raises(prunekit.ConfigError, match="unknown int8 option 'per_chanel'"):
        check_recipe(recipe)
    recipe["quantize"] = {"backend": "torch", "options": {"op_types": ["Conv"]}}
    with pytest.raises(prunekit.ConfigError, match="does not apply to backend='torch'"):
        check_recipe(recipe)
    recipe["quantize"] = {"filename": "../elsewhere.onnx"}
    with pytest.raises(prunekit.ConfigError, match="quantize.filename"):
        check_recipe(recipe)
    assert not (tmp_path / "run").exists()
    stage = STAGES.get("quantize")
    assert stage.main_only and STAGES.get("finetune").order < stage.order < STAGES.get("export").order


def test_static_calibration_uses_only_training_batches(cnn, digits, tmp_path, monkeypatch):
    seen = []
    real = prunekit.int8.quantize

    def spy(model, example_inputs, *, calibration=None, **kw):
        seen.extend(calibration)
        return real(model, example_inputs, calibration=calibration, **kw)

    monkeypatch.setattr(prunekit.int8, "quantize", spy)
    ctx = RunContext(model=cnn, data=digits, out_dir=tmp_path, recipe={}, example_inputs=digits.example_inputs(1),
                     loss_fn=F.cross_entropy)
    run_quantize(ctx, QuantizeConfig(mode="static", calibration_batches=3, batch_size=50, latency=False))
    assert [len(x) for x in seen] == [50, 50, 50]
    train = {r.numpy().tobytes() for r in digits.x_train}
    held_out = {r.numpy().tobytes() for r in torch.cat([digits.x_val, digits.x_test])} - train
    rows = [r.numpy().tobytes() for x in seen for r in x]
    assert all(r in train for r in rows) and not any(r in held_out for r in rows)
    assert ctx.results["quantize"]["calibration"]["split"] == "train"
    assert Path(ctx.results["quantize"]["path"]).is_file()


def test_torch_backend_stage_writes_no_file(mlp, digits, tmp_path):
    ctx = RunContext(model=mlp, data=digits, out_dir=tmp_path, recipe={}, example_inputs=digits.example_inputs(1),
                     loss_fn=F.cross_entropy)
    run_quantize(ctx, QuantizeConfig(backend="torch"))
    q = ctx.results["quantize"]
    assert q["backend"] == "torch" and "path" not in q and list(tmp_path.iterdir()) == []
    assert q["size_ratio"] < 0.4 and q["top1_agreement"] >= 0.99 and q["speedup_b1"] > 0


def test_report_section_shows_the_numbers():
    info = {"mode": "static", "backend": "onnxruntime", "bytes": 100_000, "float32_bytes": 360_000,
            "size_ratio": 0.278, "max_abs_diff": 0.04, "top1_agreement": 0.996, "test_accuracy": 0.97,
            "float_test_accuracy": 0.974, "latency_ms_b1": 0.05, "float32_latency_ms_b1": 0.1, "speedup_b1": 2.0,
            "calibration": {"split": "train", "batches": 4, "samples": 256}, "path": "out/model.int8.onnx"}
    html = quantize_section({"quantize": info}, {})
    for text in ("int8 (onnxruntime, static)", "99.60 %", "97.00 %", "27.8 %", "256 train-split samples",
                 "model.int8.onnx", "4.00e-02"):
        assert text in html, text
    assert quantize_section({}, {}) is None
