"""The compress: recipe stage end to end (the size waterfall in results.json and report.html), its pre-flight,
a structured-pruned model's dense baseline, and the report section."""
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import prunekit
from prunekit.data import load_data
from prunekit.models import create_model
from prunekit.recipe import check_recipe, run_recipe
from prunekit.recipe.stages import STAGES, RunContext
from prunekit.recipe.stages.compress import CentroidFitConfig, CompressConfig, run_compress
from prunekit.report.sections.compress import compress_section
from prunekit.train.loop import predict

DATA = {"name": "digits", "layout": "image", "normalize": "unit"}
RECIPE = {"seed": 0, "threads": 1, "data": DATA, "model": {"name": "digits_cnn"}, "train": {"epochs": 2, "lr": 0.003},
          "prune": {"granularity": "weight", "ratio": 0.9}, "finetune": {"epochs": 1},
          "compress": {"bits": {"linear": 5, "conv": 8}, "finetune": {"epochs": 1}},
          "measure": {"latency": False}, "report": {"html": True, "sparse_checkpoint": False}}


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("deep_run")
    return out, run_recipe(RECIPE, output=str(out))


@pytest.fixture(scope="module")
def digits():
    return load_data(**DATA)


def test_recipe_records_the_waterfall(run):
    out, results = run
    assert [r["stage"] for r in results["stages"]] == ["train", "prune", "finetune", "compress"]
    c = json.loads((out / "results.json").read_text())["compress"]
    sizes = c["sizes"]
    assert sizes["dense_fp32"] > sizes["pruned"] > sizes["shared"] >= sizes["entropy_coded"]
    assert sizes["file"] == (out / "model.deep").stat().st_size == c["file_bytes"]
    steps = [row["step"] for row in c["waterfall"]]
    assert steps == ["dense", "pruned", "shared", "finetuned", "entropy_coded", "file"]
    for row in c["waterfall"]:
        assert isinstance(row["bytes"], int) and row["bytes"] > 0
        assert row["ratio"] == pytest.approx(sizes["dense_fp32"] / row["bytes"])
        assert 0.0 <= row["test_accuracy"] <= 1.0
    by = {row["step"]: row for row in c["waterfall"]}
    assert by["dense"]["ratio"] == 1.0 and by["dense"]["delta_vs_dense"] is None
    assert by["dense"]["test_accuracy"] == results["before"]["accuracy"]
    assert by["file"]["test_accuracy"] == by["entropy_coded"]["test_accuracy"] == by["finetuned"]["test_accuracy"]
    assert by["file"]["test_accuracy"] == results["after"]["accuracy"]  # the shared model is the run's final model
    assert c["verified"] is True and c["bits"] and set(c["bits"].values()) <= {5, 8}
    assert c["finetune"]["epochs"] == 1 and any(h.get("stage") == "finetune_centroids" for h in results["history"])
    assert results["artifacts"]["deep"] == str(out / "model.deep")


def test_the_file_reproduces_the_final_model(run, digits):
    out, _ = run
    final = prunekit.load(out / "model.safetensors")
    deep = prunekit.load(out / "model.deep")
    x = digits.x_test
    with torch.no_grad():
        assert torch.equal(predict(final, x), predict(deep, x))


def test_report_shows_the_waterfall(run):
    out, _ = run
    html = (out / "report.html").read_text()
    assert "<h2>Deep Compression</h2>" in html
    for text in ("dense float32", "pruned (sparse)", "+ weight sharing", "+ entropy coding", "× smaller than dense"):
        assert text in html, text


@pytest.mark.parametrize("bits, match", [
    (9, "bits must be an int in 1..8"),
    ({"linear": 0.5}, "wrong type"),
    (True, "wrong type"),
    ({"featurs.0": 4}, "featurs.0"),
])
def test_bad_bits_fail_before_training(tmp_path, bits, match):
    recipe = {**RECIPE, "output": str(tmp_path / "run"), "compress": {"bits": bits}}
    with pytest.raises(prunekit.ConfigError, match=match):
        check_recipe(recipe)
    assert not (tmp_path / "run").exists()


def test_preflight_refuses_no_shared_layer_and_a_bad_filename(tmp_path):
    recipe = {**RECIPE, "output": str(tmp_path / "run"), "compress": {"bits": {"conv": None, "linear": None}}}
    with pytest.raises(prunekit.ConfigError, match="no Linear / conv weight to share"):
        check_recipe(recipe)
    recipe["compress"] = {"filename": "../elsewhere.deep"}
    with pytest.raises(prunekit.ConfigError, match="compress.filename"):
        check_recipe(recipe)
    recipe["compress"] = {"finetune": {"epochs": -1}}
    with pytest.raises(prunekit.ConfigError, match="epochs"):
        check_recipe(recipe)
    assert not (tmp_path / "run").exists()
    assert check_recipe({**RECIPE, "compress": {"bits": 4}})["stages"][-1] == "compress"


def test_stage_order_and_defaults():
    stage = STAGES.get("compress")
    assert STAGES.get("finetune").order < stage.order < STAGES.get("quantize").order < STAGES.get("export").order
    assert not stage.main_only  # it changes ctx.model on every rank; only its file writing is rank 0's
    cfg = CompressConfig()
    assert (cfg.finetune.epochs, cfg.finetune.lr, cfg.finetune.scheduler) == (1, 1e-4, "none")
    assert cfg.filename == "model.deep" and cfg.centroids_only is False
    from prunekit.typed import from_dict

    assert from_dict(CompressConfig, {"finetune": {"epochs": 3}}, "compress").finetune.lr == 1e-4


def test_structured_model_counts_dense_as_unpruned(tmp_path, digits):
    torch.manual_seed(0)
    dense = create_model("digits_cnn").eval()
    model = prunekit.prune(prunekit.clone_model(dense), digits.example_inputs(2), granularity="channel", ratio=0.5)
    ctx = RunContext(model=model, data=digits, out_dir=tmp_path, recipe={}, example_inputs=digits.example_inputs(1),
                     loss_fn=F.cross_entropy, teacher=dense, model_spec={"name": "digits_cnn", "kwargs": {}})
    run_compress(ctx, CompressConfig(bits=4, finetune=CentroidFitConfig(epochs=0)))
    c = ctx.results["compress"]
    assert [r["step"] for r in c["waterfall"]] == ["dense", "pruned", "shared", "entropy_coded", "file"]
    unpruned = sum(t.numel() * 4 for t in dense.state_dict().values() if t.is_floating_point()) + sum(
        t.numel() * t.element_size() for t in dense.state_dict().values() if not t.is_floating_point())
    assert c["sizes"]["dense_fp32"] == unpruned > c["sizes"]["dense_fp32_pruned_shape"]
    assert c["waterfall"][1]["test_accuracy"] is not None and ctx.model is not model
    assert set(c["bits"].values()) == {4} and Path(c["path"]).is_file()
    loaded = prunekit.load(c["path"])
    with torch.no_grad():
        assert torch.equal(predict(loaded, digits.x_test), predict(ctx.model, digits.x_test))
    assert "finetuned" not in {r["step"] for r in c["waterfall"]}


def test_report_section_shows_the_numbers():
    info = {"ratio": 31.5, "verified": True, "finetune": {"epochs": 2, "centroids_only": True},
            "path": "out/model.deep", "sizes": {},
            "waterfall": [
                {"step": "dense", "label": "dense float32", "bytes": 1066440, "ratio": 1.0, "test_accuracy": 0.8909,
                 "delta_vs_dense": None},
                {"step": "pruned", "label": "pruned (sparse)", "bytes": 124731, "ratio": 8.54, "test_accuracy": 0.8915,
                 "delta_vs_dense": 0.0006},
                {"step": "entropy_coded", "label": "+ entropy coding", "bytes": 31397, "ratio": 33.97,
                 "test_accuracy": 0.8920, "delta_vs_dense": 0.0011}],
            "layers": [{"name": "fc1.weight", "bits": 5, "numel": 235200, "kept": 23520, "pruned": 100000,
                        "shared": 30000, "stored": 28000, "positions": "gaps4", "positions_codec": "huffman",
                        "indices_codec": "huffman"}]}
    html = compress_section({"compress": info}, {})
    for text in ("1,066,440", "124,731", "8.5×", "34.0×", "89.09 %", "89.20 % (+0.11)", "31.5×", "model.deep",
                 "other parameters frozen", "fc1.weight", "23,520 of 235,200", "gaps4 + huffman / huffman"):
        assert text in html, text
    assert compress_section({}, {}) is None
