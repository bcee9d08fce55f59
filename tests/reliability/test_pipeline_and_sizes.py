"""Reduction pipelines load only their own files and registered models; the report's sizes are the files' sizes."""
from __future__ import annotations

import json
import os
import sys
import types

import pytest
import torch

import prunekit
from prunekit import CheckpointError, ReducerError
from prunekit.recipe import run_recipe
from prunekit.reduce import Reducer, load_pipeline, save_pipeline

from .conftest import assert_fault, tree


@pytest.fixture
def pipeline(tmp_path):
    from sklearn.datasets import load_digits

    x = torch.tensor(load_digits().data[:200], dtype=torch.float32)
    reducer = Reducer("pca", 6).fit(x)
    module = types.ModuleType("pipeline_user_models")
    module.net = lambda: torch.nn.Sequential(torch.nn.Linear(6, 10))
    sys.modules["pipeline_user_models"] = module
    torch.manual_seed(0)
    model = module.net().eval()
    save_pipeline(tmp_path / "pipe", reducer, model, model_spec={"name": "pipeline_user_models:net", "kwargs": {}})
    yield tmp_path / "pipe", model, reducer, x
    sys.modules.pop("pipeline_user_models", None)


@pytest.mark.parametrize("key, name", [("reducer", "../../outside.skops"), ("model", "/etc/hostname"),
                                       ("model", ".."), ("reducer", None)])
def test_a_pipeline_file_naming_a_path_outside_its_folder_is_refused(pipeline, key, name):
    folder = pipeline[0]
    info = json.loads((folder / "pipeline.json").read_text())
    info[key] = name
    (folder / "pipeline.json").write_text(json.dumps(info))
    before = tree(folder.parent)
    with pytest.raises(ReducerError) as exc:
        load_pipeline(folder)
    assert_fault(exc, ReducerError, key, "inside the pipeline folder")
    assert tree(folder.parent) == before


def test_a_pipeline_with_a_user_model_spec_needs_trust_or_the_model(pipeline):
    folder, model, reducer, x = pipeline
    with pytest.raises(CheckpointError) as exc:
        load_pipeline(folder)
    assert_fault(exc, CheckpointError, "pipeline_user_models:net", "trust_model_spec=True")
    reference = model(torch.as_tensor(reducer.estimator_.transform(x.double().numpy()), dtype=torch.float32))
    for loaded in (load_pipeline(folder, trust_model_spec=True), load_pipeline(folder, torch.nn.Sequential(torch.nn.Linear(6, 10)))):
        torch.testing.assert_close(loaded(x), reference, atol=1e-4, rtol=1e-4)


def test_a_pipeline_json_that_is_not_json_is_a_reducer_error(pipeline):
    folder = pipeline[0]
    (folder / "pipeline.json").write_bytes(b"\x00\x01 not json")
    with pytest.raises(ReducerError) as exc:
        load_pipeline(folder)
    assert_fault(exc, ReducerError, "pipeline.json", "not valid JSON")


def test_bytes_on_disk_in_the_results_are_the_files_written(tmp_path):
    out = tmp_path / "run"
    res = run_recipe({"seed": 0, "output": str(out), "data": {"name": "digits", "layout": "image"},
                      "model": {"name": "digits_cnn"}, "train": {"epochs": 1, "max_steps_per_epoch": 3},
                      "prune": {"granularity": "weight", "ratio": 0.8}, "measure": {"latency": False},
                      "report": {"html": True}})
    dense, sparse = os.path.getsize(out / "model.safetensors"), os.path.getsize(out / "model.sparse.safetensors")
    assert res["after"]["size_bytes"] == res["disk_bytes"]["checkpoint"] == dense
    assert res["after"]["sparse_size_bytes"] == res["disk_bytes"]["sparse_checkpoint"] == sparse
    saved = json.loads((out / "results.json").read_text())
    assert saved["after"]["size_bytes"] == dense and saved["disk_bytes"]["sparse_checkpoint"] == sparse
    # the masked model's dense file is the unpruned model's file plus mask markers, not weights + float masks
    baseline = os.path.getsize(out / "stages" / "01-train.safetensors")
    assert baseline <= dense < 1.05 * baseline
    # "before" counts the same way: the unpruned model's file (the stage file only adds {"stage": "train", ...})
    assert baseline - 100 < res["before"]["size_bytes"] <= baseline
    # the sparse file: 80% of conv/linear weights are zero, so well under half of the dense file
    assert sparse < 0.4 * dense
    loaded = prunekit.load(out / "model.sparse.safetensors", "digits_cnn")
    masks = prunekit.unstructured.get_masks(loaded)
    assert masks and all(torch.equal(m, (loaded.get_submodule(k.rpartition(".")[0]).weight != 0).float())
                         for k, m in masks.items())
