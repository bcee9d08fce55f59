"""Forged checkpoints: a model_spec naming an arbitrary function is refused before anything is imported or run."""
from __future__ import annotations

import sys

import pytest
import torch
from torch import nn

import prunekit
from prunekit import CheckpointError
from prunekit.models import MODELS

from .conftest import assert_fault, no_temp_files, tree


def tiny_factory(width: int = 3) -> nn.Module:
    """An importable factory that is not registered (a user's own model)."""
    torch.manual_seed(5)
    return nn.Sequential(nn.Linear(4, width), nn.ReLU(), nn.Linear(width, 2))


def forged(tmp_path, name, kwargs):
    """A checkpoint whose spec names ``name``: written with prunekit itself, so its checksums are all valid."""
    path = tmp_path / "forged.safetensors"
    prunekit.save(tiny_factory(), path, model_spec={"name": name, "kwargs": kwargs})
    return path


def attacks(pwned):
    cmd = f"touch {pwned}"
    return [
        ("subprocess:run", {"args": ["touch", str(pwned)]}),
        ("os:system", {"command": cmd}),
        ("builtins:exec", {"source": f"open({str(pwned)!r}, 'w').close()"}),
        ("subprocess:Popen.__init__", {"args": ["touch", str(pwned)]}),
        ("os.path:join.__call__", {"a": str(pwned)}),
        ("prunekit.models:create_model", {"spec": "os:system", "command": cmd}),  # prunekit's own importer, indirectly
        ("mlp:evil", {"command": cmd}),  # a registered name with a suffix
        ("mlp.x", {}),
        ("mlp ", {}),
        (" mlp", {}),
        ("MLP", {}),
    ]


@pytest.mark.parametrize("case", range(len(attacks("x"))))
def test_forged_spec_is_refused_and_nothing_runs(tmp_path, case):
    pwned = tmp_path / "pwned"
    name, kwargs = attacks(pwned)[case]
    path = forged(tmp_path, name, kwargs)
    before = tree(tmp_path)
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.load(path)
    message = assert_fault(excinfo, CheckpointError, repr(name), "not a model registered", "model=",
                           "register_model", "trust_model_spec=True")
    assert "os:system" in message  # says why: a forged file could name any function
    assert not pwned.exists()
    assert tree(tmp_path) == before
    no_temp_files(tmp_path)


def test_refused_spec_imports_nothing(tmp_path, monkeypatch):
    """A module whose import alone would write a file: deciding to refuse must not import it."""
    pwned = tmp_path / "pwned"
    pkg = tmp_path / "lib"
    pkg.mkdir()
    (pkg / "evil_on_import.py").write_text(f"open({str(pwned)!r}, 'w').close()\ndef factory(**kw):\n    raise SystemExit\n")
    monkeypatch.syspath_prepend(str(pkg))
    path = forged(tmp_path / "ckpt", "evil_on_import:factory", {})
    before = tree(tmp_path)
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.load(path)
    assert_fault(excinfo, CheckpointError, "evil_on_import:factory", "trust_model_spec=True")
    assert "evil_on_import" not in sys.modules
    assert not pwned.exists() and tree(tmp_path) == before


@pytest.mark.parametrize("spec", [
    {"name": ["os:system"], "kwargs": {}},
    {"name": "mlp", "kwargs": ["touch", "x"]},
    "os:system",
])
def test_malformed_spec_is_refused(tmp_path, spec):
    path = tmp_path / "m.safetensors"
    prunekit.save(tiny_factory(), path, model_spec=spec)
    before = tree(tmp_path)
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.load(path)
    assert_fault(excinfo, CheckpointError, "model_spec", "malformed", "model=")
    assert tree(tmp_path) == before


def test_trusted_spec_imports_the_factory(tmp_path):
    name = f"{__name__}:tiny_factory"
    path = forged(tmp_path, name, {"width": 3})
    with pytest.raises(CheckpointError) as excinfo:  # an unregistered factory: refused without the opt-in
        prunekit.load(path)
    assert_fault(excinfo, CheckpointError, name, "trust_model_spec=True")
    loaded = prunekit.load(path, trust_model_spec=True)
    x = torch.randn(5, 4)
    assert torch.equal(loaded(x), tiny_factory().eval()(x))
    assert loaded._prunekit_spec == {"name": name, "kwargs": {"width": 3}}


def test_trusted_torch_class_with_kwargs(tmp_path):
    torch.manual_seed(2)
    lin = nn.Linear(4, 3)
    path = prunekit.save(lin, tmp_path / "lin.pt", model_spec={"name": "torch.nn:Linear",
                                                               "kwargs": {"in_features": 4, "out_features": 3}})
    with pytest.raises(CheckpointError):
        prunekit.load(path)
    loaded = prunekit.load(path, trust_model_spec=True)
    assert isinstance(loaded, nn.Linear) and torch.equal(loaded.weight, lin.weight)


def test_trusted_spec_that_fails_is_a_checkpoint_error(tmp_path):
    path = forged(tmp_path, "no_such_module_xyz:factory", {})
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.load(path, trust_model_spec=True)
    assert_fault(excinfo, CheckpointError, "no_such_module_xyz", "model=")


def test_registered_names_load_without_trust(tmp_path):
    model = prunekit.models.create_model("mlp", in_features=6, hidden=[5], num_classes=3)
    path = prunekit.save(model, tmp_path / "mlp.safetensors",
                         model_spec={"name": "mlp", "kwargs": {"in_features": 6, "hidden": [5], "num_classes": 3}})
    x = torch.randn(2, 6)
    assert torch.equal(prunekit.load(path)(x), model.eval()(x))
    # a user's own factory, registered under the name the file records, before loading
    name = "myorg.models:tiny"
    path = forged(tmp_path, name, {"width": 3})
    with MODELS.scoped(name, tiny_factory):
        assert torch.equal(prunekit.load(path)(torch.ones(1, 4)), tiny_factory().eval()(torch.ones(1, 4)))


def test_registered_name_with_bad_kwargs_names_the_spec(tmp_path):
    path = forged(tmp_path, "mlp", {"no_such_argument": 1})
    with pytest.raises(CheckpointError) as excinfo:
        prunekit.load(path)
    assert_fault(excinfo, CheckpointError, "'mlp'", "no_such_argument", "model=")


def test_caller_supplied_model_ignores_the_spec(tmp_path):
    pwned = tmp_path / "pwned"
    path = forged(tmp_path, "os:system", {"command": f"touch {pwned}"})
    loaded = prunekit.load(path, tiny_factory)
    assert not pwned.exists()
    x = torch.randn(2, 4)
    assert torch.equal(loaded(x), tiny_factory().eval()(x))
