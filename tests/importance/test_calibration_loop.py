"""The one calibration loop (prunekit.importance.calibrate) behind weight and channel pruning.

Taylor scores from it equal a hand computation with plain autograd (mean over the batches of |w * dL/dw|),
for weight pruning and for channel pruning alike, and both pruners keep exactly what those scores say.
Calibration runs every module in eval mode, gives each module its own training flag back, leaves every
``.grad`` as it found it (None stays None, a user's gradient stays that tensor), also when a batch fails.
"""
from __future__ import annotations

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
from prunekit.structured.calibrate import calibrate as structured_calibrate
from prunekit.unstructured import get_masks
from prunekit.unstructured.pruner import _calibrate as weight_calibrate


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.ReLU(), nn.Linear(7, 3)).eval()


def batches(n: int = 3):
    g = torch.Generator().manual_seed(4)
    return [(torch.randn(6, 5, generator=g), torch.randint(0, 3, (6,), generator=g)) for _ in range(n)]


def reference_saliency(model, calib) -> dict:
    """name -> mean over batches of |w * dL/dw|, by plain autograd on detached copies (the model is not touched)."""
    names = [n for n, _ in model.named_parameters()]
    total = {n: torch.zeros_like(p, dtype=torch.float64) for n, p in model.named_parameters()}
    for x, y in calib:
        w = [p.detach().clone().requires_grad_() for p in model.parameters()]
        loss = F.cross_entropy(F.linear(F.relu(F.linear(x, w[0], w[1])), w[2], w[3]), y)
        grads = torch.autograd.grad(loss, w)
        for n, p, g in zip(names, w, grads):
            total[n] += (p * g).abs().double().detach()
    return {n: t / len(calib) for n, t in total.items()}


def hidden_group(model):
    graph = build_graph(model, batches()[0][0], module_rule=handler_for)
    return graph, [g for g in graph.groups if len(g.prunable)][0]


def test_taylor_weight_scores_equal_the_hand_computation():
    model, calib = mlp(), batches()
    ref = reference_saliency(model, calib)
    crit = create_criterion("taylor")
    params = [("0.weight", model[0].weight), ("2.weight", model[2].weight)]
    assert calibrate(crit, model, calib, loss_fn=F.cross_entropy, params=params) == len(calib)
    for key, _ in params:
        torch.testing.assert_close(crit.weight_scores(key, model.get_parameter(key)).double(), ref[key])
    # the weight pruner's entry (``_calibrate``) is the same loop
    other = create_criterion("taylor")
    weight_calibrate(model, [("0", model[0]), ("2", model[2])], other, calib, F.cross_entropy, 10)
    for key, _ in params:
        torch.testing.assert_close(other.weight_scores(key, model.get_parameter(key)), crit.weight_scores(key, model.get_parameter(key)))


def test_weight_pruning_with_taylor_removes_the_lowest_hand_saliencies():
    model, calib = mlp(), batches()
    ref = reference_saliency(model, calib)
    pruned = prunekit.prune(model, None, granularity="weight", criterion="taylor", ratio=0.5, calibration=calib,
                            loss_fn=F.cross_entropy, calibration_batches=len(calib))
    masks = get_masks(pruned)
    flat = torch.cat([ref[k].reshape(-1) for k in masks])
    k = round(0.5 * flat.numel())
    cut = torch.sort(flat).values
    assert cut[k - 1] < cut[k]  # no tie at the boundary: the expected masks are unambiguous
    for key, mask in masks.items():
        torch.testing.assert_close(mask, (ref[key] > cut[k - 1]).float(), rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())


def test_calibration_batches_bound_the_weight_loop():
    model, calib = mlp(), batches(5)
    crit = create_criterion("taylor")
    weight_calibrate(model, [("0", model[0])], crit, calib, F.cross_entropy, 2)
    ref = reference_saliency(model, calib[:2])
    torch.testing.assert_close(crit.weight_scores("0.weight", model[0].weight).double(), ref["0.weight"])


def channel_reference(ref: dict, reduction: str, normalize: str) -> np.ndarray:
    """Hidden-channel Taylor scores from the hand saliencies: producer rows (+ bias), consumer columns."""
    producer = (ref["0.weight"].sum(1) + ref["0.bias"]).numpy()
    consumer = ref["2.weight"].sum(0).numpy()
    if normalize == "mean":
        producer, consumer = producer / producer.mean(), consumer / consumer.mean()
    return producer + consumer if reduction == "sum" else (producer + consumer) / 2


def test_taylor_channel_scores_equal_the_hand_computation():
    model, calib = mlp(), batches()
    ref = reference_saliency(model, calib)
    graph, group = hidden_group(model)
    crit = create_criterion("taylor")
    structured_calibrate(crit, model, graph, calib, None)  # default loss: cross-entropy on the logits
    for reduction, normalize in [("sum", "none"), ("mean", "mean")]:
        got = crit.group_scores(group, model=model, reduction=reduction, normalize=normalize)
        np.testing.assert_allclose(got, channel_reference(ref, reduction, normalize), rtol=1e-5)
    # the same loop fed both: the channel-calibrated criterion holds the weight pruner's per-weight scores
    weight_crit = create_criterion("taylor")
    weight_calibrate(model, [("0", model[0])], weight_crit, calib, F.cross_entropy, 10)
    w = model[0].weight
    torch.testing.assert_close(crit.weight_scores("0.weight", w), weight_crit.weight_scores("0.weight", w))


def test_channel_pruning_with_taylor_keeps_the_highest_hand_scores():
    model, calib = mlp(), batches()
    expect = channel_reference(reference_saliency(model, calib), "mean", "mean")
    pruned = prunekit.prune(model, batches()[0][0], granularity="channel", criterion="taylor", ratio=3 / 7,
                            scope="local", calibration=calib)
    keep = np.sort(np.argsort(expect, kind="stable")[3:])
    torch.testing.assert_close(pruned[0].weight, model[0].weight[keep], rtol=0, atol=0)
    torch.testing.assert_close(pruned[2].weight, model[2].weight[:, keep], rtol=0, atol=0)
    assert all(p.grad is None for p in model.parameters())


# --- hygiene: modes, flags, gradients -----------------------------------------------------------------------


def bn_net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 3))


def mixed_flags(model):
    model.train()
    model[2].eval()  # mixed flags: one submodule already in eval mode inside a model that trains
    return {name: m.training for name, m in model.named_modules()}


def watch_modes(model) -> list:
    seen = []
    for m in model.children():
        m.register_forward_pre_hook(lambda mod, args, _seen=seen: _seen.append(mod.training))
    return seen


def prepare(kind: str, model, calib, **kw):
    """The loop of ``kind`` on ``model``, ready to run (the graph, if any, traced now)."""
    if kind == "gradients":
        return lambda: calibrate(create_criterion("taylor"), model, calib, **kw)
    if kind == "weight pruner":
        return lambda: weight_calibrate(model, [("0", model[0]), ("3", model[3])], create_criterion("taylor"), calib,
                                        kw.get("loss_fn", F.cross_entropy), 10)
    graph = build_graph(model, calib[0][0], module_rule=handler_for)
    return lambda: calibrate(create_criterion("activation"), model, calib, graph=graph, **kw)


KINDS = ["gradients", "weight pruner", "activations"]


@pytest.mark.parametrize("kind", KINDS)
def test_calibration_runs_in_eval_mode_and_restores_every_flag(kind):
    model, calib = bn_net(), batches()
    run = prepare(kind, model, calib)
    flags = mixed_flags(model)
    assert model[1].training  # the BatchNorm would update its running statistics in a training forward
    stats = {k: v.clone() for k, v in model[1].state_dict().items()}
    seen = watch_modes(model)
    run()
    assert len(seen) == len(calib) * 4 and not any(seen)  # every layer ran, in eval mode
    assert {name: m.training for name, m in model.named_modules()} == flags
    for key, value in model[1].state_dict().items():  # BatchNorm running statistics untouched
        torch.testing.assert_close(value, stats[key], rtol=0, atol=0)


@pytest.mark.parametrize("kind", KINDS)
def test_calibration_leaves_every_grad_as_it_found_it(kind):
    model, calib = bn_net(), batches()
    run = prepare(kind, model, calib)
    users = torch.full_like(model[0].weight, 7.0)
    model[0].weight.grad = users  # the user's own gradient, e.g. mid accumulation
    run()
    assert model[0].weight.grad is users and torch.all(users == 7.0)
    assert all(p.grad is None for n, p in model.named_parameters() if n != "0.weight")


@pytest.mark.parametrize("kind", KINDS)
def test_a_failing_batch_still_restores_flags_and_grads(kind):
    model, calib = bn_net(), batches()

    def loss_fn(out, y):
        raise RuntimeError("boom")

    if kind == "activations":
        run = prepare(kind, model, calib[:1] + [(torch.randn(6, 4), calib[0][1])])  # the 2nd batch has a wrong width
    else:
        run = prepare(kind, model, calib, loss_fn=loss_fn)
    flags = mixed_flags(model)
    with pytest.raises(Exception):
        run()
    assert {name: m.training for name, m in model.named_modules()} == flags
    assert all(p.grad is None for p in model.parameters())


def test_the_loss_fn_gets_the_primary_output_tensor():
    class TupleOut(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            return self.net(x), {"aux": x.sum()}

    model, got = TupleOut(), []

    def loss_fn(out, y):
        got.append(type(out))
        return F.cross_entropy(out, y)

    calibrate(create_criterion("taylor"), model, batches(), loss_fn=loss_fn)
    assert got == [torch.Tensor] * 3


def test_data_errors_are_pruning_errors():
    model = mlp()
    with pytest.raises(PruningError, match="calibration"):
        calibrate(create_criterion("taylor"), model, None)
    with pytest.raises(PruningError, match="no batches"):
        calibrate(create_criterion("taylor"), model, [])
    with pytest.raises(PruningError, match="no batches"):
        calibrate(create_criterion("taylor"), model, batches(), max_batches=0)
    with pytest.raises(PruningError, match="traced graph"):
        calibrate(create_criterion("activation"), model, batches())
    with pytest.raises(PruningError, match=r"\(inputs, targets\) pairs"):
        calibrate(create_criterion("taylor"), model, [7])
    with pytest.raises(PruningError, match="does not support unstructured"):
        prunekit.prune(model, None, granularity="weight", criterion="activation", ratio=0.5, calibration=batches(),
                       loss_fn=F.cross_entropy)


def test_a_criterion_needing_both_gets_the_batches_twice_from_a_one_shot_iterable():
    from prunekit.importance import ACTIVATIONS, GRADIENTS, WEIGHTS
    from prunekit.importance.activation import MeanActivation
    from prunekit.importance.taylor import Taylor

    class Both(Taylor, MeanActivation):
        needs = frozenset({WEIGHTS, GRADIENTS, ACTIVATIONS})

        def __init__(self):
            Taylor.__init__(self)
            MeanActivation.__init__(self)

        def reset(self):
            Taylor.reset(self)
            MeanActivation.reset(self)

    model = mlp()
    graph, group = hidden_group(model)
    crit = Both()
    assert calibrate(crit, model, iter(batches()), graph=graph) == 3  # a generator is read once, into a list
    assert crit._counts["0.weight"] == 3 and crit._count  # gradients and activation statistics both arrived
