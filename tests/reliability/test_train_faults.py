"""Training-side faults: bad data is refused before training, divergence stops with finite weights, teachers come back.

Each case asserts the prunekit error type, a message naming the cause (split, count, first index, step),
and that the model left behind is sane: finite and equal to an independent snapshot (taken before
training or by an ``epoch_end`` callback), never a half-trained NaN model.
"""
from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.data import load_data
from prunekit.data.base import DataSplits
from prunekit.errors import ConfigError, InputError, TrainingError
from prunekit.train import FitConfig, evaluate, fit
from prunekit.train.distill import DistillConfig, make_distiller
from prunekit.train.feature_distill import FeatureDistiller

from .conftest import assert_fault, tree


def blobs(n=240, d=8, k=3, seed=0) -> DataSplits:
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 3
    y = torch.randint(0, k, (n,), generator=g)
    x = centers[y] + torch.randn(n, d, generator=g)
    a, b = int(0.6 * n), int(0.8 * n)
    return DataSplits(x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], num_classes=k)


def mlp(d=8, k=3, seed=0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, k))


def state(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_state(model: nn.Module, expected: dict) -> None:
    got = model.state_dict()
    assert set(got) == set(expected)
    for key, value in expected.items():
        assert torch.isfinite(got[key]).all(), key
        assert torch.equal(got[key], value), key


def with_nan(t: torch.Tensor, where, value=float("nan")) -> torch.Tensor:
    t = t.clone()
    for index in where:
        t[index] = value
    return t


QUICK = FitConfig(epochs=3, lr=0.01, batch_size=16)  # 144 training samples: 9 steps an epoch


# --- bad data: refused before the first step, the model untouched -------------------------------------------


def test_nan_in_x_train_is_refused_before_training():
    data = blobs()
    data = data.replace(x_train=with_nan(data.x_train, [(5, 2), (7, 0), (40, 7)]))
    model = mlp()
    before = state(model)
    with pytest.raises(InputError) as excinfo:
        fit(model, data, QUICK, stage="finetune")
    assert_fault(excinfo, InputError, "stage 'finetune'", "x_train", "3 non-finite", "3 NaN", "x_train[5, 2]", "sample 5",
                 "impute")
    assert_state(model, before)


def test_inf_in_x_val_is_refused_before_training():
    data = blobs()
    data = data.replace(x_val=with_nan(data.x_val, [(11, 4)], float("inf")))
    model = mlp()
    before = state(model)
    with pytest.raises(InputError) as excinfo:
        fit(model, data, QUICK)
    msg = assert_fault(excinfo, InputError, "x_val", "1 non-finite", "1 inf", "x_val[11, 4]", "clean")
    assert "NaN" not in msg.split(";")[0]
    assert_state(model, before)


def test_label_out_of_range_names_split_count_and_first_index():
    data = blobs()
    y = data.y_train.clone()
    y[[9, 30]] = torch.tensor([3, -1])  # num_classes is 3: valid labels are 0, 1, 2
    model = mlp()
    before = state(model)
    with pytest.raises(InputError) as excinfo:
        fit(model, data.replace(y_train=y), QUICK)
    assert_fault(excinfo, InputError, "y_train", "2 labels outside 0..2", "num_classes=3", "y_train[9] = 3", "remap")
    assert_state(model, before)


def test_float_labels_are_refused_with_the_conversion_to_use():
    data = blobs()
    with pytest.raises(InputError) as excinfo:
        fit(mlp(), data.replace(y_val=data.y_val.float()), QUICK)
    assert_fault(excinfo, InputError, "y_val", "float32", "y.long()")
    y = data.y_train.float()
    y[[4, 6]] = torch.tensor([0.5, float("nan")])
    with pytest.raises(InputError) as excinfo:
        fit(mlp(), data.replace(y_train=y), QUICK)
    assert_fault(excinfo, InputError, "y_train", "2 non-integer labels", "y_train[4] = 0.5")


def test_model_with_nan_weights_is_refused():
    model = mlp()
    with torch.no_grad():
        model[2].bias[1] = float("nan")
    with pytest.raises(InputError) as excinfo:
        fit(model, blobs(), QUICK)
    assert_fault(excinfo, InputError, "non-finite weights", "2.bias", "checkpoint")


def npz_dataset(path, **changes):
    rng = np.random.default_rng(0)
    arrays = {"x_train": rng.normal(size=(120, 6)), "y_train": np.arange(120) % 3,
              "x_test": rng.normal(size=(30, 6)), "y_test": np.arange(30) % 3}
    arrays.update(changes)
    np.savez(path, **arrays)
    return {"name": "npz", "path": str(path)}


def test_nan_in_x_test_fails_at_data_loading(tmp_path):
    x_test = np.random.default_rng(1).normal(size=(30, 6))
    x_test[17, 3] = np.nan
    x_test[21, 0] = np.inf
    cfg = npz_dataset(tmp_path / "d.npz", x_test=x_test)
    with pytest.raises(InputError) as excinfo:
        load_data(cfg)
    # counted in the raw arrays: standard normalisation would otherwise spread the NaN over its whole feature
    assert_fault(excinfo, InputError, "x_test", "2 non-finite", "1 NaN, 1 inf", "x_test[17, 3]", "impute")


def test_nan_labels_fail_at_data_loading(tmp_path):
    y = (np.arange(120) % 3).astype(float)
    y[[8, 50, 51]] = [np.nan, 1.5, np.nan]
    with pytest.raises(InputError) as excinfo:
        load_data(npz_dataset(tmp_path / "d.npz", y_train=y))
    assert_fault(excinfo, InputError, "y_train", "3 non-integer labels", "index 8", "drop")


def test_datasplits_from_a_user_function_are_validated_at_loading(monkeypatch):
    import sys
    import types

    data = blobs()
    bad = data.replace(x_test=with_nan(data.x_test, [(2, 1)]))
    module = types.ModuleType("pk_fault_data")
    module.make = lambda: bad
    monkeypatch.setitem(sys.modules, "pk_fault_data", module)
    with pytest.raises(InputError) as excinfo:
        load_data(name="pk_fault_data:make")
    assert_fault(excinfo, InputError, "pk_fault_data:make", "x_test", "1 non-finite", "x_test[2, 1]")
    module.make = lambda: data
    assert load_data(name="pk_fault_data:make") is data  # a clean DataSplits passes unchanged


def test_recipe_with_nan_data_fails_before_any_stage(tmp_path):
    from prunekit.recipe import run_recipe

    x = np.random.default_rng(0).normal(size=(120, 6))
    x[3, 3] = np.nan
    recipe = {"data": npz_dataset(tmp_path / "d.npz", x_train=x), "model": {"name": "mlp", "kwargs": {"hidden": [8]}},
              "train": {"epochs": 1}, "measure": {"latency": False}, "report": {"html": False}}
    with pytest.raises(InputError) as excinfo:
        run_recipe(recipe, output=str(tmp_path / "run"))
    assert_fault(excinfo, InputError, "x_train", "1 non-finite", "x_train[3, 3]")
    assert not [p for p in tree(tmp_path / "run") if p.endswith(".safetensors")]  # no stage ever ran


# --- divergence: TrainingError, finite weights restored, history kept ----------------------------------------


def nan_at(step_no: int, epoch_len: int = 9):
    """A cross-entropy loss that returns NaN at global step ``step_no`` (counting calls during training)."""
    calls = {"n": 0}

    def loss_fn(out, y):
        loss = F.cross_entropy(out, y)
        if out.requires_grad:  # training steps only, not evaluate()
            calls["n"] += 1
            if calls["n"] == step_no:
                return loss * float("nan")
        return loss

    return loss_fn


def test_nan_loss_in_the_first_epoch_stops_with_the_pre_training_weights():
    model = mlp()
    before = state(model)
    with pytest.raises(TrainingError) as excinfo:
        fit(model, blobs(), QUICK, loss_fn=nan_at(5), stage="finetune")
    assert_fault(excinfo, TrainingError, "stage 'finetune'", "loss became nan", "epoch 1, step 5", "learning rate", "grad_clip",
                 "before training")
    err = excinfo.value
    assert (err.stage, err.epoch, err.step) == ("finetune", 1, 5)
    assert err.result.history == [] and not err.result.interrupted
    assert_state(model, before)
    assert not model.training


def test_nan_loss_later_restores_the_best_completed_epoch():
    model = mlp()
    snaps, accs = {}, {}

    def keep(event, st):
        if event == "epoch_end":
            snaps[st["epoch"]] = state(st["model"])
            accs[st["epoch"]] = st["val"]["accuracy"]

    with pytest.raises(TrainingError) as excinfo:
        fit(model, blobs(), QUICK, loss_fn=nan_at(9 * 2 + 4), callbacks=[keep])  # step 4 of epoch 3
    assert_fault(excinfo, TrainingError, "epoch 3, step 22 (batch 4 of 9)", "best epoch")
    history = excinfo.value.result.history
    assert [r["epoch"] for r in history] == [1, 2]
    assert all(math.isfinite(r["train_loss"]) for r in history)
    best = max(accs, key=lambda e: (accs[e], -e))  # first epoch reaching the best accuracy
    assert excinfo.value.result.best_epoch == best
    assert_state(model, snaps[best])


def test_nan_loss_without_restore_best_goes_back_to_the_last_completed_epoch():
    model = mlp()
    snaps = {}
    cb = lambda ev, st: snaps.__setitem__(st["epoch"], state(st["model"])) if ev == "epoch_end" else None  # noqa: E731
    cfg = FitConfig(epochs=3, lr=0.01, batch_size=16, restore_best=False)
    with pytest.raises(TrainingError) as excinfo:
        fit(model, blobs(), cfg, loss_fn=nan_at(9 * 2 + 1), callbacks=[cb])
    assert_fault(excinfo, TrainingError, "epoch 3, step 19", "epoch 2, the last completed")
    assert_state(model, snaps[2])


class _InfGrad(torch.autograd.Function):
    """Identity forward; infinite gradient backward: a finite loss whose optimizer step overflows the weights."""

    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, g):
        return g * float("inf")


def inf_grads_at(step_no: int):
    calls = {"n": 0}

    def loss_fn(out, y):
        if out.requires_grad:
            calls["n"] += 1
            if calls["n"] == step_no:
                out = _InfGrad.apply(out)
        return F.cross_entropy(out, y)

    return loss_fn


def test_inf_gradients_with_a_finite_loss_are_caught_at_the_next_step():
    model = mlp()
    before = state(model)
    with pytest.raises(TrainingError) as excinfo:
        fit(model, blobs(), FitConfig(epochs=2, lr=0.01, batch_size=16, optimizer="sgd"), loss_fn=inf_grads_at(3))
    assert_fault(excinfo, TrainingError, "weights became non-finite", "after optimizer step 3", "gradients overflowed",
                 "detected at epoch 1, step 4")
    assert excinfo.value.step == 4
    assert_state(model, before)


def test_inf_gradients_at_the_last_step_of_an_epoch_never_reach_evaluation_or_the_best_snapshot():
    model = mlp()
    before = state(model)
    seen = []
    with pytest.raises(TrainingError) as excinfo:
        fit(model, blobs(), FitConfig(epochs=2, lr=0.01, batch_size=16, optimizer="sgd"), loss_fn=inf_grads_at(9),
            callbacks=[lambda ev, st: seen.append(ev) if ev == "epoch_end" else None])
    assert_fault(excinfo, TrainingError, "after optimizer step 9", "epoch 1")
    assert seen == [] and excinfo.value.result.history == []
    assert_state(model, before)


def test_absurd_sgd_learning_rate_diverges_into_a_training_error_not_a_nan_model():
    model = mlp()
    before = state(model)
    with pytest.raises(TrainingError) as excinfo:
        fit(model, blobs(), FitConfig(epochs=3, lr=1e6, optimizer="sgd", momentum=0.9, batch_size=16))
    assert_fault(excinfo, TrainingError, "diverged", "lr is 1e+06", "lower the learning rate")
    assert_state(model, before)
    data = blobs()
    with torch.no_grad():
        untrained = float(F.cross_entropy(mlp()(data.x_val), data.y_val))
    assert evaluate(model, data.x_val, data.y_val)["loss"] == pytest.approx(untrained, rel=1e-6)


def test_grad_clip_bounds_every_sgd_update():
    data = blobs()
    model = mlp()
    before = torch.cat([p.detach().flatten().clone() for p in model.parameters()])
    lr, clip, steps = 0.5, 1e-3, 4
    fit(model, data, FitConfig(epochs=1, lr=lr, optimizer="sgd", momentum=0.0, scheduler="none", batch_size=16,
                               max_steps_per_epoch=steps, grad_clip=clip, restore_best=False))
    after = torch.cat([p.detach().flatten() for p in model.parameters()])
    moved = float((after - before).norm())
    assert 0 < moved <= steps * lr * clip * (1 + 1e-5)  # unclipped (gradient norm ~1.9) they move ~1000x further
    with pytest.raises(ConfigError, match="grad_clip"):
        fit(mlp(), data, FitConfig(grad_clip=0.0))


# --- Ctrl-C ----------------------------------------------------------------------------------------------------


def test_ctrl_c_mid_epoch_restores_the_best_completed_epoch():
    model = mlp()
    snaps, accs = {}, {}

    def cb(event, st):
        if event == "epoch_end":
            snaps[st["epoch"]] = state(st["model"])
            accs[st["epoch"]] = st["val"]["accuracy"]
        if event == "step" and st["step"] == 9 * 2 + 3:
            raise KeyboardInterrupt

    res = fit(model, blobs(), FitConfig(epochs=5, lr=0.05, batch_size=16), callbacks=[cb])
    assert res.interrupted and [r["epoch"] for r in res.history] == [1, 2]
    best = max(accs, key=lambda e: (accs[e], -e))
    assert res.best_epoch == best
    assert_state(model, snaps[best])


# --- the teacher comes back as it went in ------------------------------------------------------------------------


def odd_teacher() -> nn.Module:
    """A teacher in train mode with one submodule in eval mode and one frozen parameter."""
    torch.manual_seed(3)
    teacher = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.1), nn.Linear(16, 3))
    teacher.train()
    teacher[3].eval()
    teacher[0].bias.requires_grad_(False)
    return teacher


def teacher_fingerprint(teacher: nn.Module):
    return ([(n, m.training) for n, m in teacher.named_modules()],
            [(n, p.requires_grad, p.grad) for n, p in teacher.named_parameters()],
            state(teacher))


def assert_same_teacher(teacher: nn.Module, fingerprint) -> None:
    modes, flags, snap = fingerprint
    assert [(n, m.training) for n, m in teacher.named_modules()] == modes
    assert [(n, p.requires_grad, p.grad) for n, p in teacher.named_parameters()] == flags
    for key, value in snap.items():  # BatchNorm running stats included: the teacher ran in eval mode
        assert torch.equal(teacher.state_dict()[key], value), key


def test_fit_with_a_teacher_leaves_the_teacher_unchanged_and_trainable():
    data = blobs()
    teacher = odd_teacher()
    before = teacher_fingerprint(teacher)
    fit(mlp(), data, QUICK, teacher=teacher)
    assert_same_teacher(teacher, before)
    # the former teacher can be pruned and fine-tuned: no "optimizer got an empty parameter list"
    torch.nn.utils.prune.l1_unstructured(teacher[0], "weight", amount=0.5)
    torch.nn.utils.prune.l1_unstructured(teacher[4], "weight", amount=0.5)
    old = state(teacher)
    res = fit(teacher, data, FitConfig(epochs=1, lr=0.01, batch_size=16, restore_best=False))
    assert len(res.history) == 1
    changed = [k for k, v in old.items() if not torch.equal(teacher.state_dict()[k], v)]
    assert {"0.weight_orig", "4.weight_orig", "4.bias"} <= set(changed) and "0.bias" not in changed  # frozen stays
    assert torch.all(teacher[0].weight[teacher[0].weight_mask == 0] == 0)


def test_teacher_is_unchanged_after_a_training_error_and_after_ctrl_c():
    data = blobs()
    teacher = odd_teacher()
    before = teacher_fingerprint(teacher)
    with pytest.raises(TrainingError):
        fit(mlp(), data, QUICK, teacher=teacher, loss_fn=nan_at(3))
    assert_same_teacher(teacher, before)

    def stop(event, st):
        if event == "step" and st["step"] == 2:
            raise KeyboardInterrupt

    assert fit(mlp(), data, QUICK, teacher=teacher, callbacks=[stop]).interrupted
    assert_same_teacher(teacher, before)


def test_feature_and_logit_distillers_leave_the_teacher_unchanged():
    data = blobs()
    for build in (lambda t, s: make_distiller(t, s, DistillConfig(), data.x_train[:2]),
                  lambda t, s: FeatureDistiller(t, s, {"0": "0"}, example_inputs=data.x_train[:2])):
        teacher, student = odd_teacher(), mlp()
        before = teacher_fingerprint(teacher)
        distiller = build(teacher, student)
        try:
            fit(student, data, QUICK, distiller=distiller)
        finally:
            distiller.close()
        assert_same_teacher(teacher, before)
        assert all(not m._forward_hooks for m in list(teacher.modules()) + list(student.modules()))


# --- evaluation of a NaN model ------------------------------------------------------------------------------------


def test_evaluate_warns_when_the_logits_hold_nan(caplog):
    data = blobs()
    model = mlp()
    with torch.no_grad():
        model[2].weight[0, 0] = float("nan")
    with caplog.at_level(logging.WARNING, logger="prunekit.train.loop"):
        evaluate(model, data.x_val, data.y_val)
    assert any("NaN / inf in 48 of 48 samples" in r.getMessage() for r in caplog.records)
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="prunekit.train.loop"):
        evaluate(mlp(), data.x_val, data.y_val)
    assert not caplog.records
