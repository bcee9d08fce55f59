"""AGP gradual pruning inside fit: masks follow the formula at every update step, stay put, and roll back on budget."""
import pytest
import torch
from torch import nn

from prunekit.data.base import DataSplits
from prunekit.schedule import AGPConfig, Recovery, agp_prune, agp_sparsity
from prunekit.train import FitConfig, evaluate, fit
from prunekit.unstructured import get_masks, global_sparsity


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))


def toy_data(n=256):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
    return DataSplits(x[:192], y[:192], x[192:], y[192:], x[192:], y[192:], num_classes=3)


EX = torch.randn(1, 6)


def test_masks_follow_agp_at_every_update_step_and_never_revive():
    data = toy_data()
    kw = dict(initial=0.0, final=0.8, start=2, n_steps=5, interval=3)
    seen, masks = {}, []

    def watch(event, state):
        if event == "step":
            seen[state["step"]] = global_sparsity(state["model"])
            masks.append(get_masks(state["model"]))

    res = agp_prune(mlp(), Recovery.default(data, EX, finetune=FitConfig(epochs=4, batch_size=32, lr=0.01)), final=0.8,
                    timing=AGPConfig(start_step=2, n_steps=5, interval=3), callbacks=[watch])
    n = sum(m.weight.numel() for m in mlp() if isinstance(m, nn.Linear))
    for t, s in seen.items():
        last_update = max([u for u in range(2, 2 + 5 * 3 + 1, 3) if u <= t], default=None)
        expected = 0.0 if last_update is None else agp_sparsity(last_update, **kw)
        assert s == pytest.approx(expected, abs=1.0 / n), t
    for before, after in zip(masks, masks[1:]):  # a pruned weight never comes back
        for key in before:
            assert torch.all(after[key] <= before[key])
    assert res.stopped == "target" and global_sparsity(res.model) == pytest.approx(0.8, abs=1.0 / n)
    assert res.steps[-1]["final"] and res.steps[-1]["updates"] == 5
    assert [[h["stage"], h["epoch"]] for h in res.fit_history] == [["agp", e] for e in (1, 2, 3, 4)]  # the one training run


def test_budget_violation_rolls_back_to_sparsest_epoch_within_budget():
    data = toy_data()
    model = mlp()
    fit(model, data, FitConfig(epochs=15, batch_size=32, lr=0.01))
    base = evaluate(model, data.x_val, data.y_val, num_classes=3)["accuracy"]
    res = agp_prune(model, Recovery.default(data, EX, finetune=FitConfig(epochs=6, batch_size=32, lr=0.01, scheduler="none")),
                    final=0.99, timing=AGPConfig(interval=1, n_steps=24), max_accuracy_drop=3.0)
    assert res.rolled_back and res.stopped == "budget"
    final_row = res.steps[-1]
    assert not final_row["within_budget"]
    acc = evaluate(res.model, data.x_val, data.y_val, num_classes=3)["accuracy"]
    assert (base - acc) * 100 <= 3.0 + 1e-9
    assert global_sparsity(res.model) < 0.99
    assert "rolled back" in res.message


def test_agp_longer_than_training_is_refused():
    from prunekit.errors import ConfigError

    with pytest.raises(ConfigError, match="AGP ends at step"):
        agp_prune(mlp(), Recovery.default(toy_data(), EX, finetune=FitConfig(epochs=1, batch_size=32)), final=0.5,
                  timing=AGPConfig(interval=100, n_steps=10))
