"""Iterative / one-shot schedules: cumulative path, budget rollback, interrupt, lottery-ticket rewinding."""
import pytest
import torch
from torch import nn

import prunekit
from prunekit.data.base import DataSplits
from prunekit.errors import ConfigError
from prunekit.schedule import Recovery, RewindCheckpoint, iterative_prune, one_shot, sparsity_path
from prunekit.train import FitConfig, evaluate, fit
from prunekit.unstructured import get_masks, global_sparsity


def mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 12), nn.ReLU(), nn.Linear(12, 3))


def toy_data(n=96):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    return DataSplits(x, y, x[:32], y[:32], x[:32], y[:32], num_classes=3)


EX = torch.randn(1, 6)


def rec(data=None, **parts):
    """The default recovery on ``data``, with some parts replaced."""
    return Recovery.default(data, EX).with_(**parts)


def test_weight_rounds_follow_the_cumulative_path():
    seen = []
    res = iterative_prune(mlp(), rec(toy_data(), finetune=lambda m: seen.append(global_sparsity(m))), target=0.8,
                          rounds=4, path="geometric")
    expected = sparsity_path(0.8, 4, "geometric")
    n = sum(p.numel() for name, p in mlp().named_parameters() if name.endswith("weight"))
    assert seen == pytest.approx(expected, abs=1.0 / n)
    assert res.stopped == "target" and not res.rolled_back and res.best_round == 4
    assert global_sparsity(res.model) == pytest.approx(0.8, abs=1.0 / n)
    assert [r["round"] for r in res.steps] == [1, 2, 3, 4]
    for row in res.steps:  # every round carries ratio, metrics and size
        assert {"target_sparsity", "step_ratio", "val_accuracy", "params", "nonzero_params", "macs",
                "nonzero_macs", "drop_points", "within_budget"} <= set(row)
    assert res.steps[-1]["nonzero_params"] < res.steps[0]["nonzero_params"]


def _accuracy_by_sparsity(model):
    s = global_sparsity(model)
    return {"accuracy": 0.90 if s < 0.5 else 0.85}  # 5-point cliff past 50% sparsity


def test_budget_violation_rolls_back_to_last_model_within_budget():
    res = iterative_prune(mlp(), rec(evaluate=_accuracy_by_sparsity), target=0.8, rounds=4, path="linear",
                          max_accuracy_drop=1.0)
    assert res.stopped == "budget" and res.rolled_back and res.best_round == 2
    assert [r["within_budget"] for r in res.steps] == [True, True, False]  # stopped at round 3
    assert res.steps[2]["drop_points"] == pytest.approx(5.0)
    assert global_sparsity(res.model) == pytest.approx(0.4, abs=0.01)
    assert "rolled back to round 2" in res.message
    assert res.summary()["rolled_back"] is True


def test_first_round_violation_returns_the_unpruned_model():
    model = mlp()
    res = one_shot(model, rec(evaluate=_accuracy_by_sparsity), target=0.9, max_accuracy_drop=1.0)
    assert res.rolled_back and res.best_round == 0 and global_sparsity(res.model) == 0.0
    for a, b in zip(res.model.parameters(), model.parameters()):
        assert torch.equal(a, b)


def test_interrupt_keeps_the_best_model_so_far():
    calls = []

    def finetune(m):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt

    res = iterative_prune(mlp(), rec(evaluate=_accuracy_by_sparsity, finetune=finetune), target=0.6, rounds=3,
                          path="linear")
    assert res.interrupted and res.stopped == "interrupted" and res.best_round == 1
    assert global_sparsity(res.model) == pytest.approx(0.2, abs=0.01)


def test_lottery_ticket_rewinding_restores_early_weights_under_the_mask():
    model = mlp()
    data = toy_data()
    early = RewindCheckpoint(step=2)
    fit(model, data, FitConfig(epochs=3, batch_size=16, lr=0.05, restore_best=False), callbacks=[early])
    assert early.state is not None
    trained = {k: v.detach().clone() for k, v in model.state_dict().items()}
    checks = []

    def check(m):  # called right after prune + rewind, before any fine-tuning
        masks = get_masks(m)
        for i in (0, 2, 4):
            mask = masks[f"{i}.weight"]
            torch.testing.assert_close(m[i].weight, early.state[f"{i}.weight"] * mask, rtol=0, atol=0)
            assert torch.equal(m[i].bias, early.state[f"{i}.bias"])
        keep = torch.cat([masks[f"{i}.weight"].flatten() for i in (0, 2, 4)]).bool()
        if not checks:  # round 1: the mask was chosen on the trained weights (global L1), not on the early ones
            w = torch.cat([trained[f"{i}.weight"].flatten() for i in (0, 2, 4)])
            assert w.abs()[keep].min() >= w.abs()[~keep].max()
        else:  # round 2: weights pruned in round 1 stay pruned
            assert not torch.any(keep & ~checks[-1])
        checks.append(keep)

    iterative_prune(model, rec(data, finetune=check), target=0.5, rounds=2, path="linear", rewind_state=early.state)
    assert len(checks) == 2 and checks[1].float().mean() == pytest.approx(0.5, abs=0.01)


def test_rewinding_is_refused_for_channel_pruning():
    with pytest.raises(ConfigError, match="rewinding"):
        iterative_prune(mlp(), Recovery.default(toy_data(), EX, granularity="channel"), target=0.5,
                        rewind_state=RewindCheckpoint.capture(mlp()).state)


def test_fine_tunes_with_fit_by_default():
    """The default rounds are: prune to the cumulative sparsity (global L1, of all weights), then prunekit.train.fit."""
    data, cfg = toy_data(), FitConfig(epochs=1, batch_size=32)
    res = iterative_prune(mlp(), Recovery.default(data, EX, finetune=cfg, stage="schedule"), target=0.5, rounds=2)
    history = res.fit_history
    # the twin, by hand: the same two rounds on the cubic path with the public calls
    twin, twin_history = mlp(), []
    for k, total in enumerate(sparsity_path(0.5, 2, "cubic"), start=1):
        twin = prunekit.prune(twin, EX, granularity="weight", criterion="l1", ratio=total, relative_to="total")
        twin_history += fit(twin, data, cfg, stage="schedule").history
        row = res.steps[k - 1]
        assert row["target_sparsity"] == pytest.approx(total)
        assert row["val_accuracy"] == pytest.approx(evaluate(twin, *data.split("val"), num_classes=3)["accuracy"])
        n = sum(m.weight.numel() for m in twin if isinstance(m, nn.Linear))
        assert sum(int((m == 0).sum()) for m in get_masks(twin).values()) == round(total * n)
    ours, ref = res.model.state_dict(), twin.state_dict()
    assert ours.keys() == ref.keys() and all(torch.equal(ours[key], ref[key]) for key in ref)
    assert [h["train_loss"] for h in history] == pytest.approx([h["train_loss"] for h in twin_history])
    assert [h["epoch"] for h in history] == [1, 1] and res.stopped == "target" and res.best_round == 2
    assert [[h["stage"] for h in rows] for rows in res.histories] == [["schedule"], ["schedule"]]  # one fit per round
    assert "histories" not in res.summary()  # results.json keeps the epochs in its own history list


def test_channel_rounds_prune_the_smaller_model_so_the_cumulative_reduction_follows_the_path():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.Conv2d(16, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, 3))
    widths = []
    recovery = Recovery.default(None, torch.randn(1, 1, 8, 8), granularity="channel", criterion="l2",
                                prune_kwargs={"scope": "local"}).with_(
        evaluate=lambda m: {"accuracy": 0.9}, finetune=lambda m: widths.append((m[0].out_channels, m[3].out_channels)))
    res = iterative_prune(model, recovery, target=0.5, rounds=2, path="linear")
    assert widths == [(12, 12), (8, 8)]  # 16 * (1 - 0.25), then 12 * (1 - 1/3) = 16 * 0.5
    assert [round(r["step_ratio"], 4) for r in res.steps] == [0.25, round(1 / 3, 4)]
    assert res.steps[1]["params"] < res.steps[0]["params"] < res.baseline["params"]


def test_interrupted_stage_saves_the_best_model_and_partial_results(tmp_path):
    import json

    from prunekit.recipe import run_recipe
    from prunekit.schedule import SCHEDULES, ScheduleResult

    def interrupted(model, recovery, **kw):
        return ScheduleResult(model=model, stopped="interrupted", interrupted=True, message="interrupted; round 0")

    recipe = {"seed": 0, "output": str(tmp_path), "data": {"name": "digits", "layout": "flat"},
              "model": {"name": "mlp", "kwargs": {"hidden": [16]}}, "schedule": {"kind": "test_interrupted"},
              "measure": {"latency": False}}
    with SCHEDULES.scoped("test_interrupted", interrupted), pytest.raises(KeyboardInterrupt):
        run_recipe(recipe)
    assert "test_interrupted" not in SCHEDULES
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["status"] == "interrupted" and results["stopped_at"] == "schedule"
    assert results["interrupted"]["stage"] == "schedule" and results["schedule"]["interrupted"]
    saved = tmp_path / "stages" / "01-schedule.interrupted.safetensors"
    assert results["interrupted"]["checkpoint"] == str(saved) and saved.is_file()
