"""The train loop: learns, keeps masks, early-stops, restores the best epoch; metrics equal sklearn; KD by hand."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from sklearn.metrics import accuracy_score, recall_score
from torch import nn

import prunekit
from prunekit.data.base import DataSplits
from prunekit.measure.metrics import classification_metrics
from prunekit.train import FitConfig, LogitDistiller, evaluate, fit, kd_loss
from prunekit.unstructured import get_masks


def blobs(n=300, d=6, k=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centers = torch.randn(k, d, generator=g) * 3
    y = torch.randint(0, k, (n,), generator=g)
    x = centers[y] + torch.randn(n, d, generator=g)
    a, b = int(0.6 * n), int(0.8 * n)
    return DataSplits(x[:a], y[:a], x[a:b], y[a:b], x[b:], y[b:], num_classes=k)


def mlp(d=6, k=3):
    return nn.Sequential(nn.Linear(d, 32), nn.ReLU(), nn.Linear(32, k))


def test_fit_learns_and_records_history():
    data = blobs()
    model = mlp()
    before = evaluate(model, data.x_val, data.y_val, num_classes=3)["accuracy"]
    res = fit(model, data, FitConfig(epochs=5, lr=0.01))
    assert len(res.history) == 5 and res.history[0]["epoch"] == 1
    after = evaluate(model, data.x_val, data.y_val, num_classes=3)["accuracy"]
    assert after > max(before, 0.9)
    assert res.best_val_accuracy == max(r["val_accuracy"] for r in res.history)


def test_fit_keeps_masks():
    data = blobs()
    model = prunekit.prune(mlp(), None, ratio=0.8)
    masks = get_masks(model)
    fit(model, data, FitConfig(epochs=3, lr=0.05, optimizer="sgd"))
    for key, mask in masks.items():
        w = model.get_submodule(key.rsplit(".", 1)[0]).weight
        assert torch.all(w[mask == 0] == 0)


def test_early_stop_and_restore_best():
    data = blobs()
    model = mlp()
    seen = []
    res = fit(model, data, FitConfig(epochs=50, lr=0.05, patience=2),
              callbacks=[lambda ev, st: seen.append(st["row"]["val_accuracy"]) if ev == "epoch_end" else None])
    assert res.stopped_early and len(res.history) < 50
    final = evaluate(model, data.x_val, data.y_val, num_classes=3)["accuracy"]
    assert final == pytest.approx(max(seen))


def test_metrics_equal_sklearn():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 4, 200)
    p = np.where(rng.random(200) < 0.7, y, rng.integers(0, 4, 200))
    m = classification_metrics(y, p, 4)
    assert m["accuracy"] == pytest.approx(accuracy_score(y, p))
    assert m["recall_macro"] == pytest.approx(recall_score(y, p, average="macro"))
    fprs = []
    for c in range(4):  # independent one-vs-rest count
        fp = np.sum((p == c) & (y != c))
        tn = np.sum((p != c) & (y != c))
        fprs.append(fp / (fp + tn))
    assert m["fpr_macro"] == pytest.approx(np.mean(fprs))


def test_kd_loss_by_hand():
    s = torch.tensor([[1.0, 2.0, 0.5]])
    t = torch.tensor([[0.2, 3.0, -1.0]])
    T = 2.0
    ps = torch.softmax(s / T, -1)
    pt = torch.softmax(t / T, -1)
    expected = (pt * (pt.log() - ps.log())).sum() * T * T
    assert kd_loss(s, t, T).item() == pytest.approx(expected.item(), rel=1e-6)
    teacher = nn.Linear(3, 3)
    student = nn.Linear(3, 3)
    x, y = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    out = student(x)
    hard = F.cross_entropy(out, y)
    d = LogitDistiller(teacher, temperature=T, alpha=0.25)
    manual = 0.25 * kd_loss(out, teacher(x), T) + 0.75 * hard
    assert d.loss(x, y, out, hard).item() == pytest.approx(manual.item(), rel=1e-6)
