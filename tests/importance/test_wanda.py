"""Wanda: |W_ij| * ||X_j||_2 over every calibration token, against hand computations by explicit loops."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import prunekit
from prunekit.errors import ConfigError
from prunekit.importance import calibrate, create_criterion
from prunekit.unstructured import get_masks

W = [[0.5, -2.0, 1.0], [-0.1, 0.3, -4.0]]
# two calibration batches of 3-D inputs (batch, tokens, features): every sample and position is a token
BATCH_A = [[[1.0, 0.0, 2.0], [0.5, -1.0, 0.0]], [[0.0, 3.0, -1.0], [2.0, 2.0, 2.0]]]
BATCH_B = [[[-1.0, 1.0, 0.0], [0.0, 0.0, 0.25]]]


def tiny_linear():
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.tensor(W))
        layer.bias.zero_()
    return layer


def hand_scores(batches):
    """score[i][j] = |W[i][j]| * sqrt(sum over batches, samples, positions of x[..][j]^2), by loops."""
    sq = [0.0, 0.0, 0.0]
    for batch in batches:
        for sample in batch:
            for token in sample:
                for j, v in enumerate(token):
                    sq[j] += v * v
    return [[abs(W[i][j]) * math.sqrt(sq[j]) for j in range(3)] for i in range(2)]


def test_wanda_scores_equal_a_hand_computation():
    layer = tiny_linear()
    crit = create_criterion("wanda")
    batches = [(torch.tensor(BATCH_A), None), torch.tensor(BATCH_B)]  # a pair, and the inputs alone
    assert calibrate(crit, layer, batches, layers=[("weight", layer, "weight")]) == 2
    got = crit.weight_scores("weight", layer.weight.detach())
    torch.testing.assert_close(got, torch.tensor(hand_scores([BATCH_A, BATCH_B])), rtol=1e-6, atol=1e-6)


def test_calibration_batches_limits_what_wanda_reads():
    model = nn.Sequential(tiny_linear())
    batches = [torch.tensor(BATCH_A), torch.tensor(BATCH_B)]
    one = prunekit.prune(model, None, criterion="wanda", ratio=1 / 3, calibration=batches, calibration_batches=1)
    scores = torch.tensor(hand_scores([BATCH_A]))
    expected = torch.ones(2, 3)
    for i in range(2):  # per row: the lowest hand score goes
        expected[i, int(torch.argmin(scores[i]))] = 0.0
    assert torch.equal(get_masks(one)["0.weight"], expected)


def test_wanda_on_a_conv_uses_the_unfolded_input():
    conv = nn.Conv2d(2, 3, 2, bias=False)
    x = torch.arange(18, dtype=torch.float32).reshape(1, 2, 3, 3) / 10 - 0.5
    crit = create_criterion("wanda")
    calibrate(crit, conv, [x], layers=[("weight", conv, "weight")])
    norms = torch.zeros(2, 2, 2)
    for c in range(2):
        for ki in range(2):
            for kj in range(2):
                norms[c, ki, kj] = math.sqrt(sum(float(x[0, c, oy + ki, ox + kj]) ** 2
                                                 for oy in range(2) for ox in range(2)))
    expected = conv.weight.detach().abs() * norms.unsqueeze(0)
    torch.testing.assert_close(crit.weight_scores("weight", conv.weight.detach()), expected, rtol=1e-6, atol=1e-6)


def test_wanda_compares_per_output_row_by_default():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(12, 7), nn.ReLU(), nn.Linear(7, 5))
    with torch.no_grad():  # rows of very different scales: one global ranking would empty the small rows
        model[0].weight.mul_(torch.logspace(-3, 0, 7).unsqueeze(1))
    calib = [torch.randn(9, 12) * torch.linspace(0.1, 3, 12) for _ in range(2)]
    pruned = prunekit.prune(model, None, criterion="wanda", ratio=0.5, calibration=calib)
    for key, mask in get_masks(pruned).items():
        removed = (mask == 0).sum(1)
        assert torch.all(removed == removed[0]), key
        assert int(removed[0]) == round(0.5 * mask.shape[1])
    local = get_masks(prunekit.prune(model, None, criterion="wanda", ratio=0.5, scope="local", calibration=calib))
    assert int((local["0.weight"] == 0).sum()) == round(0.5 * 84)
    assert len(set((local["0.weight"] == 0).sum(1).tolist())) > 1  # scope="local" compares the whole layer


def test_wanda_without_calibration_is_a_config_error_naming_calibration():
    with pytest.raises(ConfigError, match=r"wanda.*calibration="):
        prunekit.prune(nn.Sequential(nn.Linear(4, 4)), None, criterion="wanda")


def test_wanda_and_sparsegpt_are_weight_pruning_only():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    for name in ("wanda", "sparsegpt"):
        with pytest.raises(ConfigError, match="weight pruning only"):
            prunekit.prune(model, torch.randn(2, 4), granularity="channel", criterion=name,
                           calibration=[torch.randn(2, 4)])
