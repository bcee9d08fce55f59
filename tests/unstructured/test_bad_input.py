"""Every bad pruning request raises a prunekit error that names the cause."""
import pytest
import torch
from torch import nn

import prunekit


def net():
    return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))


@pytest.mark.parametrize("ratio", [-0.1, 1.0, 1.5, "half"])
def test_ratio_outside_range(ratio):
    with pytest.raises(prunekit.PruningError, match="ratio"):
        prunekit.prune(net(), None, ratio=ratio)


def test_negative_threshold():
    with pytest.raises(prunekit.PruningError, match="threshold"):
        prunekit.prune(net(), None, threshold=-1.0)


def test_selection_matching_nothing():
    with pytest.raises(prunekit.PruningError, match="include pattern 'encoder.\\*' matches no module"):
        prunekit.prune(net(), None, include=["encoder.*"])
    with pytest.raises(prunekit.PruningError, match="exclude pattern 'O' matches no module"):
        prunekit.prune(net(), None, exclude=["O"])
    with pytest.raises(prunekit.PruningError, match="matches '1' but no prunable layer"):
        prunekit.prune(net(), None, include=["1"])  # the ReLU
    with pytest.raises(prunekit.PruningError, match="matches no layer"):
        prunekit.prune(net(), None, include_types=["Conv2d"])


def test_inputs_that_do_not_fit():
    with pytest.raises(prunekit.InputError, match="could not run"):
        prunekit.prune(net(), torch.randn(1, 7), ratio=0.5)


def test_unknown_criterion_and_granularity():
    with pytest.raises(prunekit.ConfigError, match="unknown criterion 'l3'"):
        prunekit.prune(net(), None, criterion="l3")
    with pytest.raises(prunekit.PruningError, match="granularity"):
        prunekit.prune(net(), None, granularity="kernel")


def test_taylor_without_data():
    with pytest.raises(prunekit.PruningError, match="calibration"):
        prunekit.prune(net(), None, criterion="taylor")
