"""Recipe runs that go wrong: each case names the fault, keeps the user's work on disk and leaves no half file."""
from __future__ import annotations

import dataclasses
import errno
import json
import os
import pathlib
import subprocess
import sys

import pytest
import torch

import prunekit
from prunekit import ConfigError, InputError, OutputError, PrunekitError, PruningError
from prunekit.recipe import register_stage, run_recipe
from prunekit.recipe.stages import STAGES

from .conftest import assert_fault, no_temp_files, tree


def recipe(out, **sections):
    base = {"seed": 0, "output": str(out), "data": {"name": "digits", "layout": "flat"},
            "model": {"name": "mlp", "kwargs": {"hidden": [16]}},
            "train": {"epochs": 1, "max_steps_per_epoch": 5},
            "prune": {"granularity": "weight", "ratio": 0.5},
            "finetune": {"epochs": 1, "max_steps_per_epoch": 3},
            "measure": {"latency": False}, "report": {"html": False}}
    base.update(sections)
    return {k: v for k, v in base.items() if v is not None}


@pytest.fixture
def fit_calls(monkeypatch):
    """Counts calls of the training loop, so a test can prove a fault was caught before any training."""
    import prunekit.recipe.stages.builtin as stages
    calls = []
    real = stages.fit

    def counting(*args, **kwargs):
        calls.append(kwargs.get("stage"))
        return real(*args, **kwargs)

    monkeypatch.setattr(stages, "fit", counting)
    return calls


def results_of(out):
    return json.loads((out / "results.json").read_text())


# --- validated before the first training step ---------------------------------------------------------------


@pytest.mark.parametrize("prune, words", [
    ({"exclude": ["fetures.0"]}, ["fetures.0"]),
    ({"include": ["layers.99"]}, ["layers.99"]),
    ({"layer_ratios": {"clasifier": 0.3}}, ["clasifier"]),
])
def test_a_pattern_matching_nothing_fails_before_training(tmp_path, fit_calls, prune, words):
    out = tmp_path / "run"
    with pytest.raises(PruningError) as exc:
        run_recipe(recipe(out, prune={"granularity": "weight", "ratio": 0.5, **prune}))
    assert_fault(exc, PruningError, *words)
    assert fit_calls == []  # nothing was trained, so nothing was lost
    assert tree(out) == {}


def test_a_channel_pattern_matching_nothing_fails_before_training(tmp_path, fit_calls):
    out = tmp_path / "run"
    with pytest.raises(PruningError) as exc:
        run_recipe(recipe(out, prune={"granularity": "channel", "ratio": 0.5, "exclude": ["nope.*"]}))
    assert_fault(exc, PruningError, "nope.*")
    assert fit_calls == [] and tree(out) == {}


def test_a_schedule_pattern_matching_nothing_fails_before_training(tmp_path, fit_calls):
    out = tmp_path / "run"
    with pytest.raises(PruningError) as exc:
        run_recipe(recipe(out, prune=None, finetune=None,
                          schedule={"kind": "iterative", "target": 0.5, "rounds": 1, "exclude": ["lyaers.0"]}))
    assert_fault(exc, PruningError, "lyaers.0")
    assert fit_calls == [] and tree(out) == {}


def test_an_unknown_stage_key_fails_before_the_output_folder_exists(tmp_path, fit_calls):
    out = tmp_path / "run"
    with pytest.raises(ConfigError) as exc:
        run_recipe(recipe(out, prune={"granularity": "weight", "ratoi": 0.5}))
    assert_fault(exc, ConfigError, "ratoi")
    assert fit_calls == [] and not out.exists()


def test_a_model_that_does_not_fit_the_data_fails_before_training(tmp_path, fit_calls):
    out = tmp_path / "run"
    with pytest.raises(InputError) as exc:
        run_recipe(recipe(out, model={"name": "mlp", "kwargs": {"hidden": [16], "in_features": 10}}))
    assert_fault(exc, InputError, "(1, 64)", "model.kwargs")
    assert fit_calls == [] and tree(out) == {}


# --- the output folder -------------------------------------------------------------------------------------


def test_an_output_path_that_is_a_file_is_refused(tmp_path, fit_calls):
    target = tmp_path / "results.txt"
    target.write_text("my notes")
    before = tree(tmp_path)
    with pytest.raises(OutputError) as exc:
        run_recipe(recipe(target))
    assert_fault(exc, OutputError, "results.txt", "is a file")
    assert tree(tmp_path) == before and fit_calls == []


def test_an_output_folder_below_a_file_is_refused(tmp_path, fit_calls):
    (tmp_path / "afile").write_text("x")
    before = tree(tmp_path)
    with pytest.raises(OutputError) as exc:
        run_recipe(recipe(tmp_path / "afile" / "run"))
    assert_fault(exc, OutputError, "afile", "not a directory")
    assert tree(tmp_path) == before and fit_calls == []


def test_a_read_only_output_folder_is_refused(tmp_path, monkeypatch, fit_calls):
    out = tmp_path / "ro"
    out.mkdir()
    if os.geteuid() == 0:  # root ignores permission bits: make the file system refuse the write instead
        real = pathlib.Path.write_bytes

        def read_only(self, data):
            if self.parent == out:
                raise OSError(errno.EROFS, "Read-only file system", str(self))
            return real(self, data)

        monkeypatch.setattr(pathlib.Path, "write_bytes", read_only)
    else:
        out.chmod(0o500)
    try:
        with pytest.raises(OutputError) as exc:
            run_recipe(recipe(out))
    finally:
        out.chmod(0o700)
    assert_fault(exc, OutputError, str(out), "writable" if os.geteuid() == 0 else "permission")
    assert tree(out) == {} and fit_calls == []


def test_disk_full_while_saving_a_stage_keeps_the_earlier_results(tmp_path, monkeypatch):
    import safetensors.torch

    out = tmp_path / "run"
    real = safetensors.torch.save_file

    def full_at_the_pruned_model(tensors, filename, metadata=None):
        if "02-prune" in str(filename):  # the pruned model's checkpoint: half written, then the disk is full
            pathlib.Path(filename).write_bytes(b"\0" * 100)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(tensors, filename, metadata=metadata)

    monkeypatch.setattr(safetensors.torch, "save_file", full_at_the_pruned_model)
    with pytest.raises(PrunekitError) as exc:
        run_recipe(recipe(out))
    assert_fault(exc, PrunekitError, "No space left", "02-prune")
    res = results_of(out)
    assert res["status"] == "failed" and res["failed_stage"] == "prune"
    assert "No space left" in res["error"]["message"]
    baseline = pathlib.Path(res["last_checkpoint"])
    assert baseline.name == "01-train.safetensors"
    loaded = prunekit.load(baseline, prunekit.models.create_model("mlp", in_features=64, num_classes=10, hidden=[16]))
    assert all(torch.isfinite(p).all() for p in loaded.parameters())
    assert sorted(tree(out)) == ["results.json", "stages/01-train.safetensors"]
    no_temp_files(out)


def test_disk_full_while_writing_results_leaves_no_half_file(tmp_path, monkeypatch):
    import prunekit.io.atomic as atomic

    out = tmp_path / "run"
    real_write = atomic.atomic_write

    def full_for_results(path, write, *, what="file"):
        if what == "results" and pathlib.Path(path).name == "results.json" and (out / "model.safetensors").exists():
            def half(tmp):
                tmp.write_text('{"stat')
                raise OSError(errno.ENOSPC, "No space left on device")
            return real_write(path, half, what=what)
        return real_write(path, write, what=what)

    monkeypatch.setattr(atomic, "atomic_write", full_for_results)
    with pytest.raises(OutputError) as exc:
        run_recipe(recipe(out))
    assert_fault(exc, OutputError, "results.json", "No space left", "free disk space")
    res = results_of(out)  # the last good results.json (written after the last stage) is still whole
    assert res["status"] == "running" and res["completed_stages"] == ["train", "prune", "finetune"]
    assert (out / "stages" / "03-finetune.safetensors").is_file()
    no_temp_files(out)


# --- the recipe file ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("content, words", [
    (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", ["binary"]),
    (b"model: {name: mlp}\ndata: \xff\xfe caf\xe9\n", ["UTF-8"]),
])
def test_a_binary_or_undecodable_recipe_is_a_config_error(tmp_path, content, words):
    path = tmp_path / "recipe.yaml"
    path.write_bytes(content)
    with pytest.raises(ConfigError) as exc:
        run_recipe(str(path), output=str(tmp_path / "out"))
    assert_fault(exc, ConfigError, "recipe.yaml", *words)
    assert sorted(tree(tmp_path)) == ["recipe.yaml"]


def test_a_folder_given_as_recipe_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError) as exc:
        run_recipe(str(tmp_path), output=str(tmp_path / "out"))
    assert_fault(exc, ConfigError, "is a folder")
    assert tree(tmp_path) == {}


# --- two runs, one folder ----------------------------------------------------------------------------------


@pytest.fixture
def other_run():
    proc = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    yield proc
    proc.kill()
    proc.wait()


def _lock(out, pid):
    import socket

    out.mkdir(parents=True, exist_ok=True)
    (out / ".prunekit.lock").write_text(json.dumps({"pid": pid, "host": socket.gethostname(), "started": "then"}))


def test_a_second_run_into_a_busy_folder_is_refused(tmp_path, other_run, fit_calls):
    out = tmp_path / "run"
    _lock(out, other_run.pid)
    before = tree(out)
    with pytest.raises(OutputError) as exc:
        run_recipe(recipe(out))
    assert_fault(exc, OutputError, f"pid {other_run.pid}", "--overwrite")
    assert tree(out) == before and fit_calls == []


def test_overwrite_takes_a_busy_folder(tmp_path, other_run):
    out = tmp_path / "run"
    _lock(out, other_run.pid)
    res = run_recipe(recipe(out), overwrite=True)
    assert res["status"] == "completed" and not (out / ".prunekit.lock").exists()


def test_a_stale_lock_is_taken_over(tmp_path):
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    out = tmp_path / "run"
    _lock(out, int(proc.stdout))  # that process has exited
    assert run_recipe(recipe(out))["status"] == "completed"
    assert not (out / ".prunekit.lock").exists()


def test_the_cli_refuses_a_busy_folder_with_exit_code_2(tmp_path, other_run, capsys):
    from prunekit.cli.main import main

    out = tmp_path / "run"
    _lock(out, other_run.pid)
    path = tmp_path / "r.json"
    path.write_text(json.dumps(recipe(out)))
    assert main(["run", str(path), "-q"]) == 2
    assert f"pid {other_run.pid}" in capsys.readouterr().err


# --- each stage's result is kept ---------------------------------------------------------------------------


@dataclasses.dataclass
class ExplodeConfig:
    pass


@pytest.fixture
def exploding_stage():
    @register_stage("explode", config=ExplodeConfig, order=45)
    def explode(ctx, cfg):
        raise PruningError("explode: a later stage failed")

    yield
    STAGES.unregister("explode")


def test_a_later_failure_keeps_the_trained_and_the_pruned_model(tmp_path, exploding_stage):
    out = tmp_path / "run"
    with pytest.raises(PruningError) as exc:
        run_recipe(recipe(out, explode={}))
    assert_fault(exc, PruningError, "later stage failed")
    res = results_of(out)
    assert res["status"] == "failed" and res["failed_stage"] == "explode"
    assert res["error"] == {"type": "PruningError", "message": "explode: a later stage failed"}
    assert res["completed_stages"] == ["train", "prune", "finetune"]
    assert sorted(tree(out)) == ["results.json", "stages/01-train.safetensors", "stages/02-prune.safetensors",
                                 "stages/03-finetune.safetensors"]
    arch = lambda: prunekit.models.create_model("mlp", in_features=64, num_classes=10, hidden=[16])  # noqa: E731
    pruned = prunekit.load(out / "stages" / "02-prune.safetensors", arch())
    sparsity = prunekit.unstructured.masks.global_sparsity(pruned)
    assert 0.45 < sparsity < 0.55  # the checkpoint is the pruned model, not the baseline
    assert prunekit.unstructured.masks.global_sparsity(prunekit.load(out / "stages" / "01-train.safetensors", arch())) == 0


def test_a_completed_run_records_every_stage_checkpoint(tmp_path):
    out = tmp_path / "run"
    res = run_recipe(recipe(out))
    saved = results_of(out)
    assert saved["status"] == res["status"] == "completed"
    assert list(saved["checkpoints"]) == ["train", "prune", "finetune"]
    assert all(pathlib.Path(p).is_file() for p in saved["checkpoints"].values())
    assert not (out / ".prunekit.lock").exists()
    no_temp_files(out)


# --- Ctrl-C ------------------------------------------------------------------------------------------------


@pytest.fixture
def ctrl_c_at_step(monkeypatch):
    """Ctrl-C arrives during the 3rd optimizer step of the first training."""
    real = torch.optim.Adam.step
    count = {"n": 0}

    def step(self, *a, **k):
        count["n"] += 1
        if count["n"] == 3:
            raise KeyboardInterrupt
        return real(self, *a, **k)

    monkeypatch.setattr(torch.optim.Adam, "step", step)
    return count


def test_ctrl_c_during_training_stops_the_run_and_keeps_the_model(tmp_path, ctrl_c_at_step, fit_calls):
    out = tmp_path / "run"
    with pytest.raises(KeyboardInterrupt):
        run_recipe(recipe(out, train={"epochs": 3, "max_steps_per_epoch": 2}))
    assert fit_calls == ["train"]  # prune and finetune never started
    res = results_of(out)
    assert res["status"] == "interrupted" and res["stopped_at"] == "train"
    assert res["interrupted"]["checkpoint"].endswith("01-train.interrupted.safetensors")
    assert sorted(tree(out)) == ["results.json", "stages/01-train.interrupted.safetensors"]
    assert "after" not in res and not (out / ".prunekit.lock").exists()


def test_ctrl_c_in_the_cli_exits_130(tmp_path, ctrl_c_at_step, capsys):
    from prunekit.cli.main import main

    out = tmp_path / "run"
    path = tmp_path / "r.json"
    path.write_text(json.dumps(recipe(out, train={"epochs": 3, "max_steps_per_epoch": 2})))
    assert main(["run", str(path), "-q"]) == 130
    assert "interrupted" in capsys.readouterr().err
    assert results_of(out)["status"] == "interrupted"


# --- the process is left as it was found -------------------------------------------------------------------


def test_a_recipe_threads_setting_is_restored(tmp_path):
    torch.set_num_threads(2)
    try:
        run_recipe(recipe(tmp_path / "run", threads=1, prune=None, finetune=None))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


def test_threads_are_restored_after_a_failure_too(tmp_path, exploding_stage):
    torch.set_num_threads(2)
    try:
        with pytest.raises(PruningError):
            run_recipe(recipe(tmp_path / "run", threads=1, explode={}))
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_files_are_created_with_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        run_recipe(recipe(tmp_path / "run", report={"html": True}, export={"formats": ["onnx"]}))
    finally:
        os.umask(old)
    files = [p for p in (tmp_path / "run").rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"model.safetensors", "model.sparse.safetensors", "report.html",
                                       "results.json", "model.onnx", "01-train.safetensors"}
    modes = {p.name: oct(p.stat().st_mode & 0o777) for p in files}
    assert set(modes.values()) == {oct(0o666 & ~umask)}, modes


def test_version_flag_prints_the_version(capsys):
    from prunekit.cli.main import main

    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"prunekit {prunekit.__version__}"
