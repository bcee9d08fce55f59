"""Exports are verified, not trusted: a file that only reproduces the example input is refused, nothing is left on disk.

The references are independent of prunekit's checker: the deviation a frozen branch must show is computed
by hand from the model's two branches, and every file that is accepted is run again here (onnxruntime /
torch.jit.load) on fresh inputs and compared with eager PyTorch.
"""
import logging
import re
import warnings

import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.data.base import DataSplits
from prunekit.errors import ExportError, InputError
from prunekit.export import different_inputs, export, export_verified, verify_onnx, verify_torchscript
from prunekit.recipe.stages.builtin import ExportConfig, run_export
from prunekit.recipe.stages import RunContext
from tests.reliability.conftest import assert_fault, no_temp_files, tree
from tests.zoo import ZOO


class Branchy(nn.Module):
    """``if x.sum() > 0`` in Python: tracing records only the branch the example input takes."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        h = self.fc(x)
        if x.sum() > 0:
            return h * 2
        return -h


class BatchDivided(nn.Module):
    """A size read as a Python float: tracing freezes it to the example's batch size."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) / float(x.size(0))


class BatchArange(nn.Module):
    """``torch.arange(int(batch))``: the traced graph holds a constant of the example's batch size."""

    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(4, 3)

    def forward(self, x):
        return self.fc(x) + torch.arange(int(x.shape[0])).unsqueeze(1)


def branchy():
    torch.manual_seed(0)
    return Branchy(), torch.rand(3, 4) + 0.1  # positive sum: the example takes the `h * 2` branch


def ort_run(path, x):
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return torch.from_numpy(session.run(None, {"input_0": x.numpy()})[0])


def jit_load(path):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(str(path))


def second_deviation(message):
    """The deviation the error reports for the second input: ``(batch, value)``."""
    found = re.search(r"second input \(Tensor\((\d+), 4\):float32\): max \|exported - eager\| = ([0-9.e+-]+)", message)
    assert found, message
    return int(found.group(1)), float(found.group(2))


# ---------------------------------------------------------------------------------- the second input
def test_second_input_flips_the_sum_changes_the_batch_and_keeps_ids_and_masks_valid():
    x = torch.rand(3, 4) + 0.1
    other = different_inputs(x, 4)
    assert other.shape == (4, 4) and other.dtype == x.dtype
    assert float(x.sum()) > 0 > float(other.sum())  # a branch on the sum takes the other side
    assert bool((torch.sign(other[:3]) == -torch.sign(x)).all())  # and so does a branch on any element
    ids = torch.randint(5, 40, (2, 12))
    mask = torch.rand(2, 12) > 0.5
    new_ids, new_mask = different_inputs((ids, mask), 3)
    assert new_ids.shape == (3, 12) and new_ids.dtype == torch.int64
    assert int(new_ids.min()) >= 5 and int(new_ids.max()) <= 39 and not torch.equal(new_ids[:2], ids)
    assert new_mask.dtype == torch.bool and torch.equal(new_mask[:2], mask)
    assert torch.equal(different_inputs(x, 4), other)  # seeded: the same on every call


# ------------------------------------------------------------------------- data-dependent control flow
@pytest.mark.parametrize("fmt,kw,words", [
    ("onnx", {}, ["legacy exporter", "dynamo exporter", "data-dependent", "torch.export cannot capture"]),
    ("onnx", {"dynamo": False}, ["legacy exporter", "dynamo=True"]),
    ("torchscript", {"method": "trace"}, ["torch.jit.trace", "method='script'"]),
])
def test_frozen_branch_is_refused_with_the_deviation_and_the_fix(tmp_path, fmt, kw, words):
    model, x = branchy()
    target = tmp_path / f"model.{fmt}"
    with pytest.raises(ExportError) as excinfo:
        export(model, x, target, fmt=fmt, **kw)
    message = assert_fault(excinfo, ExportError, str(target), "differs", "second input", "`if x.sum() > 0:`",
                           "Converting a tensor to a Python boolean", "frozen", "torch.where", "torch.cond", *words)
    batch, reported = second_deviation(message)
    # independent reference: the file returns the example's branch (2h) where eager returns -h, so |2h - (-h)| = 3|h|
    other = different_inputs(x, batch)
    assert float(other.sum()) < 0
    with torch.no_grad():
        expected = float(3 * model.fc(other).abs().max())
    assert reported == pytest.approx(expected, rel=1e-2)
    assert tree(tmp_path) == {}  # neither the final name nor a temp file
    no_temp_files(tmp_path)


def test_torchscript_auto_falls_back_to_script_which_keeps_both_branches(tmp_path, caplog):
    model, x = branchy()
    with caplog.at_level(logging.WARNING, logger="prunekit.export"):
        path = export(model, x, tmp_path / "model.pt", fmt="torchscript")
    assert list(tree(tmp_path)) == ["model.pt"]
    logged = caplog.text
    assert "torch.jit.trace" in logged and "TOO LARGE" in logged and "torch.jit.script" in logged
    loaded = jit_load(path)
    pos, neg = torch.rand(5, 4) + 0.1, -(torch.rand(2, 4) + 0.1)
    with torch.no_grad():
        assert torch.allclose(loaded(pos), model.fc(pos) * 2, atol=1e-6)  # both branches, by hand
        assert torch.allclose(loaded(neg), -model.fc(neg), atol=1e-6)


def test_failed_export_leaves_an_existing_file_untouched(tmp_path):
    model, x = branchy()
    target = tmp_path / "model.onnx"
    target.write_bytes(b"previous verified export")
    with pytest.raises(ExportError):
        export(model, x, target, dynamo=False)
    assert target.read_bytes() == b"previous verified export"
    assert list(tree(tmp_path)) == ["model.onnx"]
    no_temp_files(tmp_path)


def test_verify_false_writes_the_unchecked_file_and_verify_functions_then_catch_it(tmp_path):
    model, x = branchy()
    ts = export(model, x, tmp_path / "frozen.pt", fmt="torchscript", method="trace", verify=False)
    onnx_path = export(model, x, tmp_path / "frozen.onnx", dynamo=False, verify=False)
    neg = -(torch.rand(4, 4) + 0.1)
    with torch.no_grad():  # the opt-out really writes the frozen trace: the wrong branch on a negative input
        assert torch.allclose(jit_load(ts)(neg), model.fc(neg) * 2, atol=1e-6)
        assert torch.allclose(ort_run(onnx_path, neg), model.fc(neg) * 2, atol=1e-5)
    with pytest.raises(ExportError) as excinfo:
        verify_torchscript(model, x, ts)
    assert_fault(excinfo, ExportError, "differs", "second input", "TOO LARGE")
    with pytest.raises(ExportError) as excinfo:
        verify_onnx(model, x, onnx_path)
    assert_fault(excinfo, ExportError, "differs", "second input", "torch.where")


# ---------------------------------------------------------------------------- shape-specialised ops
@pytest.mark.parametrize("fmt,kw", [("onnx", {"dynamo": False}), ("torchscript", {"method": "trace"})])
@pytest.mark.parametrize("cls,symptom", [(BatchDivided, "TOO LARGE"), (BatchArange, "fails to run")])
def test_size_frozen_to_the_example_batch_is_caught_at_the_second_batch_size(tmp_path, fmt, kw, cls, symptom):
    torch.manual_seed(0)
    model, x = cls(), torch.randn(2, 4)
    with pytest.raises(ExportError) as excinfo:
        export(model, x, tmp_path / f"m.{fmt}", fmt=fmt, **kw)
    assert_fault(excinfo, ExportError, "second input (Tensor(3, 4)", symptom, "batch size 2", "frozen",
                 "x.view(x.shape[0], -1)", "dynamo=True")
    assert tree(tmp_path) == {}


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_default_settings_fall_back_to_an_exporter_that_keeps_the_size_symbolic(tmp_path, fmt):
    torch.manual_seed(0)
    model, x = BatchDivided(), torch.randn(2, 4)
    path = export(model, x, tmp_path / f"m.{fmt}", fmt=fmt)  # ONNX: dynamo exporter; TorchScript: script
    assert list(tree(tmp_path)) == [f"m.{fmt}"]
    for batch in (1, 5):
        xb = torch.randn(batch, 4)
        with torch.no_grad():
            expected = model.fc(xb) / batch  # by hand
            got = ort_run(path, xb) if fmt == "onnx" else jit_load(path)(xb)
        assert torch.allclose(got, expected, atol=1e-5)


# -------------------------------------------------------------------------------- bad inputs and paths
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_wrong_example_shape_is_an_input_error_before_anything_is_written(tmp_path, fmt):
    model, _ = branchy()
    with pytest.raises(InputError) as excinfo:
        export(model, torch.randn(2, 7), tmp_path / "out" / "m.bin", fmt=fmt)
    assert_fault(excinfo, InputError, "Tensor(2, 7)")
    assert tree(tmp_path) == {} and not (tmp_path / "out").exists()


def test_path_under_a_file_or_a_folder_path_is_refused_naming_the_path(tmp_path):
    model, x = branchy()
    (tmp_path / "notdir").write_text("a file")
    (tmp_path / "folder").mkdir()
    before = tree(tmp_path)
    with pytest.raises(ExportError) as excinfo:
        export(model, x, tmp_path / "notdir" / "m.onnx")
    assert_fault(excinfo, ExportError, str(tmp_path / "notdir"), "is a file")
    with pytest.raises(ExportError) as excinfo:
        export(model, x, tmp_path / "folder", fmt="torchscript")
    assert_fault(excinfo, ExportError, str(tmp_path / "folder"), "is a folder", "file path")
    assert tree(tmp_path) == before
    assert list((tmp_path / "folder").iterdir()) == []


# ------------------------------------------------------------------------------------- normal models
@pytest.mark.parametrize("name", ["mlp", "resnet_basic", "bert_like"])
@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_normal_models_export_verified_on_two_inputs(tmp_path, name, fmt):
    entry = ZOO.get(name)
    model, x = entry.build().eval(), entry.example_inputs()
    result = export_verified(model, x, tmp_path / f"{name}.{fmt}", fmt=fmt)
    assert list(tree(tmp_path)) == [f"{name}.{fmt}"]
    v = result.verification
    assert v.ok and [r.label for r in v.results] == ["example input", "second input"]
    assert f"Tensor({x.shape[0] + 1}," in v.results[1].inputs  # the second input has another batch size
    assert v.max_abs_diff < 1e-3
    # independent re-check on a fresh input at yet another batch size
    fresh = torch.randint(0, 50, (7, x.shape[1])) if x.dtype == torch.int64 else torch.randn(7, *x.shape[1:])
    with torch.no_grad():
        expected = model(fresh)
        got = (torch.from_numpy(ort.InferenceSession(str(result.path), providers=["CPUExecutionProvider"])
                                .run(None, {"input_0": fresh.numpy()})[0]) if fmt == "onnx" else jit_load(result.path)(fresh))
    assert torch.allclose(got, expected, atol=1e-4)


# --------------------------------------------------------------------------------------- recipe stage
def _ctx(model, tmp_path):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100, 4, generator=gen)
    y = torch.randint(0, 3, (100,), generator=gen)
    data = DataSplits(x[:60], y[:60], x[60:80], y[60:80], x[80:], y[80:], num_classes=3)
    return RunContext(model=model, data=data, out_dir=tmp_path, recipe={}, example_inputs=data.example_inputs(1),
                      loss_fn=F.cross_entropy)


def test_recipe_export_records_the_deviation_per_format_and_input(tmp_path):
    torch.manual_seed(0)
    ctx = _ctx(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)), tmp_path)
    run_export(ctx, ExportConfig(formats=["onnx", "torchscript"]))
    rows = [r for r in ctx.results["stages"] if r["stage"] == "export"]
    assert [r["format"] for r in rows] == ["onnx", "torchscript"]
    for row in rows:
        assert row["verified"] is True
        for key in ("max_abs_diff", "max_abs_diff_example", "max_abs_diff_second", "max_abs_diff_test_data"):
            assert 0 <= row[key] < 1e-4, (key, row)
    assert sorted(tree(tmp_path)) == ["model.onnx", "model.torchscript.pt"]


def test_recipe_export_of_a_frozen_branch_raises_and_writes_nothing(tmp_path):
    model, _ = branchy()
    ctx = _ctx(model, tmp_path)
    ctx.example_inputs = torch.rand(1, 4) + 0.1
    with pytest.raises(ExportError) as excinfo:
        run_export(ctx, ExportConfig(formats=["onnx"]))
    assert_fault(excinfo, ExportError, "model.onnx", "differs", "torch.where")
    assert tree(tmp_path) == {}
    assert not [r for r in ctx.results["stages"] if r["stage"] == "export"]
