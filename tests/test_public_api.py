"""The public names external users call stay functions, whatever submodules get imported later."""
import importlib

import torch
from torch import nn

import prunekit


def test_measure_stays_callable_after_submodule_imports():
    model = nn.Sequential(nn.Linear(4, 3))
    first = prunekit.measure(model, torch.randn(2, 4), latency=False)
    for name in ("prunekit.measure.storage", "prunekit.measure.summary", "prunekit.measure.macs"):
        importlib.import_module(name)
    again = prunekit.measure(model, torch.randn(2, 4), latency=False)
    assert first["params"] == again["params"] == 15
    assert first["macs"] == 2 * 4 * 3


def test_public_names():
    for name in ("prune", "measure", "save", "load", "finalize", "PrunekitError", "PruningError", "ConfigError",
                 "InputError", "CheckpointError", "TraceError", "ReducerError", "ExportError"):
        assert hasattr(prunekit, name), name
    assert callable(prunekit.prune) and callable(prunekit.measure)
