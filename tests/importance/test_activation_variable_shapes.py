"""Activation statistics of a torch.export-captured model (a tiny Hugging Face BERT) from batches of any shape.

The exported graph spells out the example's sizes, so it cannot run calibration batches of other lengths; the
FFN's GELU is an activation module there (aten.gelu inside ``intermediate_act_fn``), whose outputs the model
itself hands over. The criterion's scores equal a hand computation (mean |GELU(x W1^T + b1)| over every
position of every batch, padding included, from the FFN inputs read off the eager model), for batches of
different sequence lengths and for batches of the example's shape alike, and pruning keeps the neurons those
scores rank highest. An activation that is not a module's output still needs batches of the example's shapes,
and says so.
"""
from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit.errors import PruningError
from prunekit.graph.groups import build_graph
from prunekit.importance import calibrate, create_criterion
from prunekit.structured import handler_for

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "hf"))
from hf_zoo import ENTRIES  # noqa: E402  (skips without transformers)

FFN = "bert.encoder.layer.{}.intermediate.dense"


def bert():
    model = ENTRIES["bert"].build()  # BertForSequenceClassification: 2 layers, hidden 32, FFN 64
    ids = torch.randint(0, 96, (1, 12), generator=torch.Generator().manual_seed(3))
    return model, (ids, torch.ones_like(ids))


def varlen_batches():
    """(input_ids, attention_mask) batches of 7, 12 and 9 tokens (and sizes 2, 1, 3), the last tokens padded."""
    g = torch.Generator().manual_seed(5)
    out = []
    for b, s in ((2, 7), (1, 12), (3, 9)):
        ids = torch.randint(1, 96, (b, s), generator=g)
        mask = torch.ones_like(ids)
        mask[0, s - 3:] = 0
        ids[0, s - 3:] = 0
        out.append(((ids, mask), None))
    return out


def hand_scores(model, batches):
    """layer -> mean over every position of |GELU(x W1^T + b1)|, x the FFN input read by a hook, by hand."""
    sums, counts, seen = {}, {}, {}
    layers = model.bert.encoder.layer
    hooks = [layer.intermediate.dense.register_forward_pre_hook(
        lambda mod, args, i=i: seen.__setitem__(i, args[0].detach().double())) for i, layer in enumerate(layers)]
    try:
        with torch.no_grad():
            for (ids, mask), _ in batches:
                model(ids, mask)
                for i, layer in enumerate(layers):
                    lin = layer.intermediate.dense
                    h = seen[i] @ lin.weight.double().T + lin.bias.double()
                    a = 0.5 * h * (1 + torch.erf(h / math.sqrt(2)))  # exact GELU
                    flat = a.reshape(-1, a.shape[-1])
                    sums[i] = sums.get(i, 0) + flat.abs().sum(0)
                    counts[i] = counts.get(i, 0) + flat.shape[0]
    finally:
        for h in hooks:
            h.remove()
    return {i: (sums[i] / counts[i]).numpy() for i in sums}


def criterion_scores(model, example, batches):
    graph = build_graph(model, example, module_rule=handler_for)
    assert graph.captured.exported  # the case under test: a torch.export capture with spelled-out sizes
    crit = create_criterion("activation")
    assert calibrate(crit, model, batches, graph=graph) == len(batches)
    out = {}
    for g in graph.groups:
        names = {m.axis.module for m in g.producers()}
        for i in range(len(model.bert.encoder.layer)):
            if FFN.format(i) in names:
                out[i] = np.asarray(crit.group_scores(g, model=model), dtype=float)
    return out


@pytest.mark.parametrize("kind", ["different lengths", "the example's shape"])
def test_activation_scores_equal_a_hand_computation(kind):
    model, example = bert()
    if kind == "different lengths":
        batches = varlen_batches()
    else:
        g = torch.Generator().manual_seed(6)
        batches = [((torch.randint(1, 96, (1, 12), generator=g), torch.ones(1, 12, dtype=torch.long)), None)
                   for _ in range(3)]
    got, want = criterion_scores(model, example, batches), hand_scores(model, batches)
    assert sorted(got) == sorted(want) == [0, 1]
    for i in want:
        assert got[i].shape == (64,)
        np.testing.assert_allclose(got[i], want[i], rtol=1e-6, atol=1e-9)


def test_pruning_keeps_the_neurons_the_hand_scores_rank_highest():
    model, example = bert()
    batches = varlen_batches()
    want = hand_scores(model, batches)
    pruned = prunekit.prune(model, example, granularity="channel", criterion="activation", ratio=0.5, scope="local",
                            ignore=["bert.embeddings.word_embeddings"], layer_ratios={"*.attention.*": 0.0},
                            calibration=batches)
    for i in want:
        keep = np.sort(np.argsort(-want[i], kind="stable")[:32])
        lin = model.bert.encoder.layer[i].intermediate.dense
        torch.testing.assert_close(pruned.bert.encoder.layer[i].intermediate.dense.weight, lin.weight[keep])


class FunctionalRelu(nn.Module):
    """A ReLU called as a function inside a layer's forward: no module's output is the activation alone."""

    def __init__(self):
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(5, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(F.relu(self.fc1(x)).reshape(x.shape[0], -1))


def test_a_functional_activation_in_an_exported_graph_needs_the_example_shapes():
    torch.manual_seed(0)
    model = FunctionalRelu().eval()
    example = torch.randn(4, 5)
    graph = build_graph(model, example, tracer="export", module_rule=handler_for)
    crit = create_criterion("activation")
    same = [(torch.randn(4, 5), None) for _ in range(2)]
    calibrate(crit, model, same, graph=graph)  # the example's shape: the graph runs
    want = torch.stack([F.relu(model.fc1(x)) for x, _ in same]).abs().mean((0, 1)).detach().numpy()
    group = next(g for g in graph.groups if "fc1" in {m.axis.module for m in g.producers()})
    np.testing.assert_allclose(crit.group_scores(group, model=model), want, rtol=1e-6)
    with pytest.raises(PruningError, match=r"torch\.export.*shapes \[\(4, 5\)\]"):
        calibrate(crit, model, [(torch.randn(3, 5), None)], graph=graph)
