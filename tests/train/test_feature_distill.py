"""Feature and logit distillation losses against hand computation; adapters, hooks and training through fit."""
import math

import pytest
import torch
from torch import nn

from prunekit.data.base import DataSplits
from prunekit.errors import ConfigError
from prunekit.train.feature_distill import FeatureDistillConfig, FeatureDistiller, logit_distillation_loss


def mlp(hidden, seed):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(4, hidden), nn.ReLU(), nn.Linear(hidden, 3))


def hand_kl(student, teacher, t):
    total = 0.0
    for s_row, t_row in zip(student.tolist(), teacher.tolist()):
        zs = [math.exp(v / t) for v in s_row]
        zt = [math.exp(v / t) for v in t_row]
        ps = [v / sum(zs) for v in zs]
        pt = [v / sum(zt) for v in zt]
        total += sum(q * math.log(q / p) for p, q in zip(ps, pt))
    return total / len(student)


def test_logit_loss_matches_hand_kl():
    torch.manual_seed(0)
    s, t, hard = torch.randn(5, 3), torch.randn(5, 3), torch.tensor(0.7)
    T, a = 3.0, 0.4
    expected = a * T * T * hand_kl(s, t, T) + (1 - a) * 0.7
    assert float(logit_distillation_loss(s, t, hard, temperature=T, alpha=a)) == pytest.approx(expected, rel=1e-5)


def test_feature_distiller_loss_matches_hand_computation():
    teacher, student = mlp(8, 0), mlp(5, 1)
    x = torch.randn(6, 4)
    d = FeatureDistiller(teacher, student, ["0"], weight=0.3, temperature=2.0, alpha=0.6, example_inputs=x[:1])
    adapter = d.adapters["0"]
    assert isinstance(adapter, nn.Linear) and adapter.weight.shape == (8, 5)
    assert [p.shape for p in d.parameters()] == [torch.Size([8, 5])]
    out = student(x)
    hard = nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 0, 1, 2]))
    loss = d.loss(x, None, out, hard)
    with torch.no_grad():
        s_feat, t_feat, t_out = student[0](x), teacher[0](x), teacher(x)
        mse = ((s_feat @ adapter.weight.T - t_feat) ** 2).mean()
    expected = 0.6 * 4.0 * hand_kl(out.detach(), t_out, 2.0) + 0.4 * float(hard.detach()) + 0.3 * float(mse)
    assert float(loss.detach()) == pytest.approx(expected, rel=1e-5)
    loss.backward()
    assert adapter.weight.grad is not None and student[0].weight.grad is not None
    assert all(p.grad is None for p in teacher.parameters())
    d.close()


def test_conv_features_get_a_1x1_conv_adapter_and_identity_when_equal():
    torch.manual_seed(0)
    t = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 4, 3, padding=1))
    s = nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.ReLU(), nn.Conv2d(3, 4, 3, padding=1))
    x = torch.randn(2, 1, 5, 5)
    with FeatureDistiller(t, s, {"0": "0", "2": "2"}, example_inputs=x) as d:
        assert isinstance(d.adapters["0"], nn.Conv2d) and d.adapters["0"].kernel_size == (1, 1)
        assert d.adapters["0"].in_channels == 3 and d.adapters["0"].out_channels == 8
        assert isinstance(d.adapters["2"], nn.Identity)
        s(x)
        t(x)
        expected = nn.functional.mse_loss(d.adapters["0"](s[0](x)), t[0](x)) + nn.functional.mse_loss(s(x), t(x))
        assert float(d.feature_loss()) == pytest.approx(float(expected), rel=1e-5)
    # shapes from layer attributes, without a probe
    d2 = FeatureDistiller(t, s, ["0"])
    assert d2.adapters["0"].in_channels == 3
    d2.close()


def test_close_removes_every_hook_and_bad_names_fail():
    teacher, student = mlp(8, 0), mlp(5, 1)
    d = FeatureDistiller(teacher, student, ["0", "2"], example_inputs=torch.randn(1, 4))
    assert len(student[0]._forward_hooks) == 1 and len(teacher[2]._forward_hooks) == 1
    d.close()
    assert all(len(m._forward_hooks) == 0 for m in list(student) + list(teacher))
    with pytest.raises(ConfigError, match="'nope' is not a module of the student"):
        FeatureDistiller(teacher, student, ["nope"])


def test_fit_trains_the_adapters():
    from prunekit.train import FitConfig, fit

    teacher, student = mlp(8, 0), mlp(5, 1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    y = teacher(x).argmax(1).detach()
    data = DataSplits(x, y, x[:16], y[:16], x[:16], y[:16], num_classes=3)
    weight, lr = 0.7, 0.05
    cfg = FeatureDistillConfig(layers=["0"], weight=weight)
    d = cfg.build(teacher, student, example_inputs=x[:1])
    a0 = d.adapters["0"].weight.detach().clone()  # (8, 5): student width 5 -> teacher width 8
    with torch.no_grad():  # hand-computed gradient of weight * mean((s A^T - t)^2) w.r.t. the adapter A
        s, t = student[0](x), teacher[0](x)
        residual = s @ a0.T - t  # (64, 8)
        grad = weight * 2.0 / residual.numel() * residual.T @ s
    # one full-batch plain SGD step (no momentum, constant lr): A <- A - lr * dL/dA; only the feature term sees A
    fit(student, data, FitConfig(epochs=1, batch_size=64, lr=lr, optimizer="sgd", momentum=0.0, scheduler="none",
                                 restore_best=False), distiller=d)
    torch.testing.assert_close(d.adapters["0"].weight.detach(), a0 - lr * grad, rtol=1e-5, atol=1e-7)
    assert float(grad.abs().max()) * lr > 1e-3  # the step is large enough for the comparison to mean something
    d.close()
