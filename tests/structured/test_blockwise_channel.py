"""Channel pruning calibrated block by block (``blocks=`` / ``max_memory=``): the plan of whole-model calibration.

The reference is the same request without ``blocks`` (whole-model forwards, :func:`prunekit.importance.calibrate`).
Calibration batches share one shape (the example inputs').
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import pytest
import torch

import prunekit
from prunekit import ConfigError, PruneSpec
from prunekit.errors import PruningError

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hf"))
hf_zoo = pytest.importorskip("hf_zoo")


def batches(n: int = 3, b: int = 2, s: int = 12):
    return [(torch.randint(0, 96, (b, s), generator=torch.Generator().manual_seed(10 + i)),) for i in range(n)]


def build(name):
    entry = hf_zoo.ENTRIES[name]
    return entry.build(), entry.inputs()


def plan(model, x, **kw):
    return prunekit.plan(model, x, granularity="channel", ratio=0.3, calibration=batches(), **kw)


@pytest.fixture
def block_calls(monkeypatch):
    """How many times block-by-block calibration ran (so a test sees the blocks path was taken)."""
    from prunekit.importance import sequential

    calls = []
    real = sequential.calibrate_blocks

    def spy(*args, **kwargs):
        calls.append(kwargs.get("blocks"))
        return real(*args, **kwargs)

    monkeypatch.setattr(sequential, "calibrate_blocks", spy)
    return calls


@pytest.mark.parametrize("name", ["llama", "bert"])
@pytest.mark.parametrize("criterion", ["activation", "apoz"])
def test_block_by_block_gives_the_plan_of_whole_model_calibration(name, criterion, block_calls, tmp_path,
                                                                  monkeypatch, caplog):
    monkeypatch.setattr("tempfile.tempdir", str(tmp_path))
    model, x = build(name)
    whole = plan(model, x, criterion=criterion)
    assert block_calls == []
    blocks = plan(model, x, criterion=criterion, blocks="auto")
    with caplog.at_level(logging.INFO, logger="prunekit.importance.activation_cache"):
        spilled = plan(model, x, criterion=criterion, blocks="auto", max_memory=0)
    assert block_calls == ["auto", "auto"]
    assert "go to" in caplog.text  # spilled to disk
    assert list(tmp_path.glob("prunekit-activations-*")) == []  # and cleaned up
    assert whole.removed and sum(map(len, whole.removed.values())) > 0
    scored = {g.index: g.scores for g in whole.groups if g.scores is not None}
    assert scored
    for other in (blocks, spilled):
        assert other.removed == whole.removed  # the same channels removed
        assert {g.index: g.scores for g in other.groups if g.scores is not None} == scored  # from the same scores


def test_prune_with_blocks_gives_the_model_of_whole_model_calibration(block_calls):
    model, x = build("llama")
    kw = dict(granularity="channel", criterion="activation", ratio=0.3, calibration=batches())
    whole = prunekit.prune(model, x, **kw)
    blocks = prunekit.prune(model, x, blocks="model.layers", max_memory="1GB", block_inputs="dense", **kw)
    assert block_calls == ["model.layers"]
    sa, sb = whole.state_dict(), blocks.state_dict()
    assert sa.keys() == sb.keys() and sum(p.numel() for p in whole.parameters()) < sum(
        p.numel() for p in model.parameters())
    for k in sa:
        assert torch.equal(sa[k], sb[k]), k


def test_channel_pruning_calibrates_on_dense_block_inputs_by_default():
    channel = PruneSpec(granularity="channel", criterion="activation", blocks="auto")
    weight = PruneSpec(granularity="weight", criterion="wanda", blocks="auto", scope="row")
    assert channel.block_inputs is None and channel.part().block_inputs == "dense"
    assert weight.block_inputs is None and weight.part().block_inputs == "pruned"


@pytest.mark.parametrize("options,match", [
    ({"criterion": "activation", "blocks": "auto", "block_inputs": "pruned"}, "block_inputs='pruned' is weight"),
    ({"criterion": "taylor", "blocks": "auto"}, "reads gradients"),
    ({"criterion": "l1", "blocks": "auto"}, "choose activation / apoz"),
    ({"criterion": "activation", "max_memory": "1GB"}, "set blocks='auto'"),
    ({"criterion": "activation", "blocks": "auto", "max_memory": "lots"}, "max_memory must be"),
    ({"criterion": "activation", "blocks": "auto", "block_inputs": "later"}, "block_inputs must be"),
])
def test_block_options_of_channel_pruning_are_checked(options, match):
    model, x = build("llama")
    with pytest.raises(ConfigError, match=match):
        prunekit.prune(model, x, granularity="channel", ratio=0.3, calibration=batches(1), **options)


def test_gradient_criteria_are_refused_by_block_by_block_calibration_itself():
    from prunekit.importance import create_criterion
    from prunekit.structured.api import build_graph
    from prunekit.structured.calibrate import calibrate
    from prunekit.structured.handlers import handler_for

    model, x = build("llama")
    graph = build_graph(model, x, (), "auto", module_rule=handler_for)
    with pytest.raises(PruningError, match="gradients.*blocks=None"):
        calibrate(create_criterion("taylor"), model, graph, batches(1), None, blocks="auto")


def test_an_activation_computed_inline_is_refused_naming_whole_model_calibration():
    model, x = build("gpt2")  # GPT-2's NewGELUActivation is several ops: its watched activation is no module's output
    plan(model, x, criterion="activation")  # whole-model calibration serves it
    with pytest.raises(PruningError, match="blocks=None"):
        plan(model, x, criterion="activation", blocks="auto")
