"""Structured pruning over every zoo architecture: runs, shrinks, equals the masked model, reloads, exports to ONNX."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from prunekit.measure import count_macs
from prunekit.structured import apply_plan, get_plan
from prunekit.api import prune

from structured_helpers import ZOO, assert_outputs_close, masked_reference, n_params, onnx_outputs, outputs

NAMES = ZOO.names()
SCOPES = ("local", "global")
_CACHE: dict = {}


def pruned(name: str, scope: str):
    """(original, pruned) for a zoo entry at ratio 0.5, cached across tests of this module."""
    key = (name, scope)
    if key not in _CACHE:
        torch.manual_seed(0)
        entry = ZOO.get(name)
        original = entry.build().eval()
        _CACHE[key] = (original, prune(original, entry.example_inputs(), ratio=0.5, scope=scope, granularity="channel", criterion="l2"))
    return _CACHE[key]


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("name", NAMES)
def test_shapes_kept_and_params_macs_drop(name, scope):
    original, small = pruned(name, scope)
    inputs = ZOO.get(name).example_inputs()
    assert [o.shape for o in outputs(small, inputs)] == [o.shape for o in outputs(original, inputs)]
    assert n_params(small) < n_params(original)
    assert count_macs(small, inputs)["macs"] < count_macs(original, inputs)["macs"]
    assert n_params(original) == n_params(ZOO.get(name).build())  # the original was not modified


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("name", NAMES)
def test_equals_original_with_removed_channels_zeroed(name, scope):
    original, small = pruned(name, scope)
    inputs = ZOO.get(name).example_inputs()
    reference = masked_reference(original, get_plan(small))
    assert_outputs_close(outputs(small, inputs), outputs(reference, inputs))


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("name", NAMES)
def test_apply_plan_then_load_state_dict_reproduces_outputs(name, scope):
    _, small = pruned(name, scope)
    inputs = ZOO.get(name).example_inputs()
    plan = json.loads(json.dumps(get_plan(small)))  # the plan is saved as JSON metadata
    fresh = apply_plan(ZOO.get(name).build(), plan)
    fresh.load_state_dict(small.state_dict())
    assert_outputs_close(outputs(fresh, inputs), outputs(small, inputs), atol=0, rtol=0)


@pytest.mark.parametrize("name", NAMES)
def test_onnx_export_matches_eager(name):
    _, small = pruned(name, "local")
    inputs = ZOO.get(name).example_inputs()
    got = onnx_outputs(small, inputs)
    assert_outputs_close(tuple(got), outputs(small, inputs), atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("name", NAMES)
def test_zero_channels_are_removed_first_and_change_nothing(name):
    """Zero the slices a first pruning removed; pruning that zeroed model removes exactly them, output unchanged."""
    original, small = pruned(name, "local")
    inputs = ZOO.get(name).example_inputs()
    plan = get_plan(small)
    zeroed = masked_reference(original, {"params": plan["params"], "modules": {}})
    again = prune(zeroed, inputs, ratio=0.5, criterion="l1", granularity="channel", scope="local")
    assert get_plan(again)["params"] == plan["params"]
    layernorm_pruned = any(e["type"] == "LayerNorm" for e in plan["modules"].values())
    reference = masked_reference(zeroed, plan) if layernorm_pruned else zeroed  # LN statistics see the zeros
    assert_outputs_close(outputs(again, inputs), outputs(reference, inputs))


@pytest.mark.parametrize("name", NAMES)
def test_torch_export_capture_prunes_to_the_masked_model(name):
    """The torch.export capture path (used when fx fails) gives a correct pruning on every zoo model too."""
    torch.manual_seed(0)
    entry = ZOO.get(name)
    original, inputs = entry.build().eval(), entry.example_inputs()
    small = prune(original, inputs, ratio=0.5, tracer="export", granularity="channel", criterion="l2", scope="local")
    assert n_params(small) < n_params(original)
    reference = masked_reference(original, get_plan(small))
    assert_outputs_close(outputs(small, inputs), outputs(reference, inputs))
    fresh = apply_plan(entry.build(), copy.deepcopy(get_plan(small)))
    fresh.load_state_dict(small.state_dict())
    assert_outputs_close(outputs(fresh, inputs), outputs(small, inputs), atol=0, rtol=0)
