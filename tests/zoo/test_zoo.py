"""Every zoo entry builds deterministically, runs, is tiny, and its traced graph reproduces eager outputs."""
from __future__ import annotations

import warnings

import pytest
import torch
import torch.fx

from prunekit._inputs import split_inputs

from . import ZOO, ZooEntry

NAMES = ZOO.names()
REQUIRED = {
    "vgg", "resnet_basic", "resnet_bottleneck", "preact_resnet", "mobilenetv2", "resnext", "squeeze_excite",
    "densenet", "inception", "unet", "yolo_like", "mlp", "conv1d", "vit_tiny", "bert_like", "lstm",
}


def outputs(model, inputs) -> tuple:
    args, kwargs = split_inputs(inputs)
    with torch.no_grad():
        out = model(*args, **kwargs)
    return out if isinstance(out, tuple) else (out,)


def assert_same(a: tuple, b: tuple) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-6)


def test_zoo_has_the_required_architectures():
    assert REQUIRED <= set(NAMES)
    assert all(isinstance(ZOO.get(n), ZooEntry) and ZOO.get(n).name == n for n in NAMES)


@pytest.mark.parametrize("name", NAMES)
def test_build_is_seeded_and_leaves_global_rng_alone(name):
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    a, b = ZOO.get(name).build(), ZOO.get(name).build()
    assert torch.equal(torch.rand(3), before)  # building did not consume the global RNG
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


@pytest.mark.parametrize("name", NAMES)
def test_runs_deterministically_in_eval_mode(name):
    torch.manual_seed(0)
    entry = ZOO.get(name)
    model = entry.build().eval()
    first = outputs(model, entry.example_inputs())
    second = outputs(model, entry.example_inputs())
    assert all(torch.equal(x, y) for x, y in zip(first, second))
    assert all(torch.isfinite(x).all() for x in first)
    batch = split_inputs(entry.example_inputs())[0][0].shape[0]
    assert all(x.shape[0] == batch for x in first)


@pytest.mark.parametrize("name", NAMES)
def test_is_tiny(name):
    # the structured tests run over every entry: keep each under 20k parameters
    params = sum(p.numel() for p in ZOO.get(name).build().parameters())
    assert 0 < params < 20_000


@pytest.mark.parametrize("name", NAMES)
def test_batchnorm_statistics_are_not_identity(name):
    # randomized running stats make a pruner that slices the wrong BN channels visible
    for mod in ZOO.get(name).build().modules():
        if isinstance(mod, (torch.nn.BatchNorm1d, torch.nn.BatchNorm2d)):
            assert not torch.allclose(mod.running_var, torch.ones_like(mod.running_var))


@pytest.mark.parametrize("name", NAMES)
def test_fx_trace_reproduces_eager(name):
    torch.manual_seed(0)
    entry = ZOO.get(name)
    model = entry.build().eval()
    traced = torch.fx.symbolic_trace(model)
    assert_same(outputs(traced, entry.example_inputs()), outputs(model, entry.example_inputs()))


@pytest.mark.parametrize("name", [n for n in NAMES if "recurrent" in ZOO.get(n).tags])
def test_torch_export_reproduces_eager_for_recurrent(name):
    entry = ZOO.get(name)
    model = entry.build().eval()
    args, _ = split_inputs(entry.example_inputs())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # LSTM's _flat_weights assignment warning
        exported = torch.export.export(model, args)
    assert_same(outputs(exported.module(), entry.example_inputs()), outputs(model, entry.example_inputs()))


def test_bert_like_reads_head_attributes_in_forward():
    # a pruner that removes heads updates num_heads/head_dim; forward must follow them
    model = ZOO.get("bert_like").build().eval()
    attn = model.layers[0].attention
    assert (attn.num_heads, attn.head_dim) == (4, 4)
    keep = torch.arange(attn.head_dim * 2)  # keep heads 0 and 1
    for lin in (attn.query, attn.key, attn.value):
        lin.weight.data, lin.bias.data = lin.weight.data[keep], lin.bias.data[keep]
        lin.out_features = len(keep)
    attn.out.weight.data = attn.out.weight.data[:, keep]
    attn.out.in_features = len(keep)
    attn.num_heads = 2
    out = outputs(model, ZOO.get("bert_like").example_inputs())[0]
    assert out.shape == (2, 3)
    traced = torch.fx.symbolic_trace(model)
    assert_same(outputs(traced, ZOO.get("bert_like").example_inputs()), (out,))


def test_example_inputs_are_reproducible_and_typed():
    tokens = ZOO.get("bert_like").example_inputs()
    assert tokens.dtype == torch.long and torch.equal(tokens, ZOO.get("bert_like").example_inputs())
    pair = ZOO.get("two_input").example_inputs()
    assert isinstance(pair, tuple) and [t.shape for t in pair] == [(2, 3, 16, 16), (2, 6)]
