"""Channel pruning of Hugging Face models (tiny configs): runs, shrinks, equals the masked original, reloads."""
from __future__ import annotations

import copy
import json

import pytest
import torch

from prunekit._inputs import split_inputs
from prunekit.api import prune
from prunekit.structured import apply_plan, get_plan

from hf_zoo import ENTRIES, NAMES, logits

from structured.structured_helpers import assert_outputs_close, masked_reference, n_params

SCOPES = ("local", "global")
_CACHE: dict = {}


def run(model, inputs) -> torch.Tensor:
    args, kwargs = split_inputs(inputs)
    with torch.no_grad():
        return logits(model.eval()(*args, **kwargs))


def pruned(name: str, scope: str):
    key = (name, scope)
    if key not in _CACHE:
        entry = ENTRIES[name]
        original = entry.build()
        _CACHE[key] = (original, prune(original, entry.inputs(), ratio=0.3, scope=scope, granularity="channel",
                                       criterion="l2"))
    return _CACHE[key]


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("name", NAMES)
def test_runs_keeps_output_shape_and_shrinks(name, scope):
    original, small = pruned(name, scope)
    inputs = ENTRIES[name].inputs()
    assert run(small, inputs).shape == run(original, inputs).shape
    assert n_params(small) < 0.9 * n_params(original), (n_params(small), n_params(original))
    assert n_params(original) == n_params(ENTRIES[name].build())  # the caller's model is untouched


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("name", NAMES)
def test_equals_the_original_with_removed_channels_zeroed(name, scope):
    original, small = pruned(name, scope)
    inputs = ENTRIES[name].inputs()
    reference = masked_reference(original, get_plan(small))
    assert_outputs_close((run(small, inputs),), (run(reference, inputs),))


@pytest.mark.parametrize("scope", SCOPES)
@pytest.mark.parametrize("name", NAMES)
def test_plan_replays_on_a_fresh_model(name, scope):
    _, small = pruned(name, scope)
    inputs = ENTRIES[name].inputs()
    fresh = apply_plan(ENTRIES[name].build(), json.loads(json.dumps(get_plan(small))))
    fresh.load_state_dict(copy.deepcopy(small.state_dict()))
    assert torch.equal(run(fresh, inputs), run(small, inputs))
