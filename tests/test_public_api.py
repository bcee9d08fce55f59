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


def test_prune_channel_through_public_api_options():
    model = prunekit.models.create_model("digits_cnn").eval()
    x = torch.randn(2, 1, 8, 8)
    dense = prunekit.measure(model, x, latency=False)["macs"]
    convs_only = prunekit.prune(model, x, granularity="channel", include_types=["Conv2d"], ratio=0.5)
    assert convs_only.classifier[1].out_features == model.classifier[1].out_features  # Linear groups untouched
    assert convs_only.features[3].out_channels < model.features[3].out_channels
    target = prunekit.prune(model, x, granularity="channel", ratio=None, macs_target=0.5)
    kept = prunekit.measure(target, x, latency=False)["macs"] / dense
    assert 0.35 < kept <= 0.5
    assert target(x).shape == model(x).shape


def test_weight_only_options_refused_for_structured_and_vice_versa():
    import pytest

    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    with pytest.raises(prunekit.ConfigError, match="structured pruning only"):
        prunekit.prune(model, torch.randn(1, 4), macs_target=0.5)
    with pytest.raises(prunekit.ConfigError, match="threshold applies to weight pruning"):
        prunekit.prune(model, torch.randn(1, 4), granularity="channel", threshold=0.1)


def test_channel_pruning_after_input_pruning_prunes_the_first_layer_too(tmp_path):
    torch.manual_seed(0)

    def build():
        return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 16), nn.ReLU(), nn.Linear(16, 10))

    x = torch.randn(4, 16)
    selected = prunekit.prune(build(), x, granularity="input", ratio=0.5)
    slim = prunekit.prune(selected, x, granularity="channel", ratio=0.5)
    shapes = [(m.in_features, m.out_features) for m in slim if isinstance(m, nn.Linear)]
    assert shapes == [(8, 16), (16, 8), (8, 10)]
    reloaded = prunekit.load(prunekit.save(slim, tmp_path / "s.safetensors"), build())
    assert torch.equal(reloaded(x), slim.eval()(x))
