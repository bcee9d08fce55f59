"""Channels pruned through nn.Unflatten: its unflattened_size shrinks with them, and the plan replays it."""
import pytest
import torch
from torch import nn

import prunekit
from prunekit import CheckpointError
from prunekit.structured import apply_plan, get_plan


def net():
    return nn.Sequential(nn.Linear(6, 16), nn.Unflatten(1, (8, 2)), nn.Conv1d(8, 6, 1), nn.ReLU(),
                         nn.Conv1d(6, 4, 1), nn.Flatten())


def test_pruning_through_unflatten_matches_the_masked_model_and_reloads(tmp_path):
    torch.manual_seed(0)
    model, x = net().eval(), torch.randn(5, 6)
    pruned = prunekit.prune(model, x, granularity="channel", ratio=0.5)
    kept = pruned[1].unflattened_size[0]
    assert pruned[0].out_features == 2 * kept and pruned[2].in_channels == kept < 8
    rows = get_plan(pruned)["modules"]["0"]["keep"]["out"]
    assert rows == [r for c in sorted({r // 2 for r in rows}) for r in (2 * c, 2 * c + 1)]  # whole (C, 2) pairs
    torch.testing.assert_close(pruned[0].weight, model[0].weight[rows])
    prunekit.save(pruned, tmp_path / "m.safetensors")
    again = prunekit.load(tmp_path / "m.safetensors", net())
    assert again[1].unflattened_size == (kept, 2)
    torch.testing.assert_close(again(x), pruned(x))


def test_a_forged_unflatten_entry_is_a_checkpoint_error():
    torch.manual_seed(0)
    pruned = prunekit.prune(net().eval(), torch.randn(5, 6), granularity="channel", ratio=0.5)
    plan = get_plan(pruned)
    plan["attributes"] = [{"module": "1", "attr": "unflattened_size[7]", "value": 3}]
    with pytest.raises(CheckpointError, match=r"unflattened_size\[7\]"):
        apply_plan(net(), plan)
