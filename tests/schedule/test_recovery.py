"""``Recovery``: the call order and ratios schedules and searches use, the default parts against the public calls
they stand for, validation, and progress through return values and callbacks only."""
import pytest
import torch
from torch import nn

import prunekit
from prunekit.data import load_data
from prunekit.data.base import DataSplits
from prunekit.errors import ConfigError
from prunekit.models import create_model
from prunekit.schedule import AGPConfig, FitFinetune, Recovery, agp_prune, iterative_prune
from prunekit.search import budget_search
from prunekit.train import FitConfig, FitResult, evaluate, fit

EX = torch.randn(1, 6)


def tiny():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 3))


class Recorder:
    """Hand-written parts that log every call; prune tags the model with the ratio it was asked for."""

    def __init__(self, accuracy=lambda total: 0.9):
        self.calls, self.accuracy = [], accuracy

    def prune(self, model, *, total, step, inplace=False):
        self.calls.append(("prune", round(total, 6), round(step, 6), inplace))
        model.total = total
        return model

    def finetune(self, model):
        self.calls.append(("finetune",))
        return FitResult(history=[{"stage": "mine", "epoch": 1, "total": getattr(model, "total", 0.0)}])

    def evaluate(self, model):
        self.calls.append(("evaluate",))
        return {"accuracy": self.accuracy(getattr(model, "total", 0.0))}

    def measure(self, model):
        self.calls.append(("measure",))
        total = getattr(model, "total", 0.0)
        return {"params": 100, "nonzero_params": round(100 * (1 - total)), "macs": 80, "nonzero_macs": round(80 * (1 - total))}

    def recovery(self):
        return Recovery(prune=self.prune, finetune=self.finetune, evaluate=self.evaluate, measure=self.measure)


def test_iterative_calls_the_parts_in_order_with_the_path_ratios():
    r = Recorder(accuracy=lambda total: 0.9 - 0.02 * total)
    seen = []
    res = iterative_prune(tiny(), r.recovery(), target=0.75, rounds=3, path="linear", on_round=seen.append)
    # linear path 0.25, 0.5, 0.75; step = share of what is left: 0.25 / 1, 0.25 / 0.75, 0.25 / 0.5
    round_calls = lambda total, step: [("prune", total, step, False), ("finetune",), ("evaluate",), ("measure",)]
    assert r.calls == [("evaluate",), ("measure",), *round_calls(0.25, 0.25), *round_calls(0.5, round(1 / 3, 6)),
                       *round_calls(0.75, 0.5)]
    assert [(row["round"], row["target_sparsity"], row["step_ratio"]) for row in res.steps] == \
        [(1, 0.25, 0.25), (2, 0.5, pytest.approx(1 / 3)), (3, 0.75, 0.5)]
    assert [row["drop_points"] for row in res.steps] == pytest.approx([0.5, 1.0, 1.5])  # 2 points per unit sparsity
    assert [row["achieved_sparsity"] for row in res.steps] == pytest.approx([0.25, 0.5, 0.75])
    assert res.baseline == {"val_accuracy": 0.9, "params": 100, "nonzero_params": 100, "macs": 80, "nonzero_macs": 80}
    assert len(seen) == 3 and all(a is b for a, b in zip(seen, res.steps))  # the callback gets exactly the rows
    assert res.histories == [[{"stage": "mine", "epoch": 1, "total": t}] for t in (0.25, 0.5, 0.75)]
    assert res.fit_history == [h for rows in res.histories for h in rows]


def test_budget_search_probes_the_bisection_ratios_and_reports_each_probe_once():
    r = Recorder(accuracy=lambda total: 0.9 if total <= 0.5 else 0.8)  # a 10-point cliff past 0.5
    seen = []
    res = budget_search(tiny(), r.recovery(), max_accuracy_drop=0.5, lo=0.0, hi=0.8, tol=0.06, max_probes=10,
                        on_probe=seen.append)
    # by hand: 0.8 fails; [0, 0.8] -> 0.4 ok; [0.4, 0.8] -> 0.6 fails; [0.4, 0.6] -> 0.5 ok; [0.5, 0.6] -> 0.55 fails;
    # [0.5, 0.55] is narrower than tol
    ratios = [0.8, 0.4, 0.6, 0.5, 0.55]
    assert [p["ratio"] for p in res.probes] == pytest.approx(ratios)
    assert [p["ok"] for p in res.probes] == [False, True, False, True, False]
    # one-shot probes: a fresh copy pruned once (total = step = the ratio), fine-tuned, evaluated, measured
    assert r.calls[:2] == [("evaluate",), ("measure",)]  # the baseline first
    assert r.calls[2:] == [c for t in ratios for c in (("prune", t, t, False), ("finetune",), ("evaluate",), ("measure",))]
    assert res.ratio == 0.5 and res.best["nonzero_params"] == 50
    assert seen == res.probes
    assert res.histories == [[{"stage": "mine", "epoch": 1, "total": t}] for t in ratios]


def toy_data(n=256):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 0.5).long()
    return DataSplits(x[:192], y[:192], x[192:], y[192:], x[192:], y[192:], num_classes=3)


def test_agp_prunes_in_place_along_the_cubic_formula():
    r = Recorder()
    cfg = FitConfig(epochs=4, batch_size=32, lr=0.01)  # 192 / 32 = 6 steps per epoch, 24 in all
    recovery = Recovery.default(toy_data(), EX, finetune=cfg).with_(prune=r.prune)
    seen = []
    res = agp_prune(tiny(), recovery, final=0.8, timing=AGPConfig(start_step=2, interval=3, n_steps=5), on_round=seen.append)
    # s_t = s_f + (s_i - s_f) (1 - (t - t0) / (n dt))^3 at t = 2, 5, ..., 17; t = 2 gives 0 (nothing to prune)
    totals = [0.8 * (1 - (1 - k / 5) ** 3) for k in range(1, 6)]
    steps, before = [], 0.0
    for t in totals:
        steps.append((t - before) / (1 - before))
        before = t
    assert [c for c in r.calls if c[0] == "prune"] == \
        [("prune", round(t, 6), round(s, 6), True) for t, s in zip(totals, steps)]
    assert [row["epoch"] for row in res.steps[:-1]] == [1, 2, 3, 4] and res.steps[-1]["final"]
    assert len(seen) == 5 and all(a is b for a, b in zip(seen, res.steps))
    assert len(res.histories) == 1 and [h["stage"] for h in res.histories[0]] == ["agp"] * 4


@pytest.fixture(scope="module")
def digits():
    return load_data(name="digits", layout="flat")


@pytest.mark.parametrize("granularity", ["weight", "channel"])
def test_default_parts_are_the_public_calls(digits, granularity):
    """Recovery.default == prunekit.prune (cumulative weights / per-step channels) + train.fit + validation evaluate + measure."""
    ex = digits.example_inputs(1)
    cfg = FitConfig(epochs=1, batch_size=64)

    def prune(m, *, total, step, inplace=False):
        if granularity == "weight":
            return prunekit.prune(m, ex, granularity="weight", criterion="l1", ratio=total, relative_to="total",
                                  scope="global", inplace=inplace)
        return prunekit.prune(m, ex, granularity="channel", criterion="l1", ratio=step, scope="global", inplace=inplace)

    def measure(m):
        full = prunekit.measure(m, ex, latency=False)
        return {k: full[k] for k in ("params", "nonzero_params", "macs", "nonzero_macs")}

    explicit = Recovery(prune=prune, finetune=lambda m: fit(m, digits, cfg, stage="schedule"),
                        evaluate=lambda m: evaluate(m, *digits.split("val"), num_classes=digits.num_classes),
                        measure=measure, granularity=granularity)
    default = Recovery.default(digits, ex, granularity=granularity, prune_kwargs={"scope": "global"}, finetune=cfg,
                               stage="schedule")
    model = create_model("mlp", hidden=[32])
    ours = iterative_prune(model, default, target=0.6, rounds=2, path="linear")
    ref = iterative_prune(model, explicit, target=0.6, rounds=2, path="linear")
    assert ours.baseline == ref.baseline
    assert ours.steps == ref.steps
    assert ours.histories == ref.histories and [len(h) for h in ours.histories] == [1, 1]
    a, b = ours.model.state_dict(), ref.model.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("part", ["prune", "finetune", "evaluate", "measure", "prune_layers"])
def test_a_part_that_is_not_callable_is_refused_by_name(part):
    with pytest.raises(ConfigError, match=rf"Recovery\.{part} must be callable"):
        Recovery.default(None, EX).with_(**{part: 0.5})


def test_misuse_is_a_config_error_naming_the_fix():
    rec = Recovery.default(None, EX)
    with pytest.raises(ConfigError, match="no part 'evalute'.*evaluate"):
        rec.with_(evalute=lambda m: {})
    with pytest.raises(ConfigError, match="Recovery.granularity must be one of weight, channel"):
        rec.with_(granularity="block")
    with pytest.raises(ConfigError, match="may not set criterion"):
        Recovery.default(None, EX, prune_kwargs={"criterion": "l2"})
    with pytest.raises(ConfigError, match=r"takes a prunekit.schedule.Recovery.*got DataSplits"):
        iterative_prune(tiny(), toy_data(), target=0.5)
    with pytest.raises(ConfigError, match=r"built without data.*with_\(evaluate="):
        iterative_prune(tiny(), rec, target=0.5)
    with pytest.raises(ConfigError, match="must return a dict of metrics with 'accuracy'"):
        iterative_prune(tiny(), rec.with_(evaluate=lambda m: 0.9), target=0.5)
    with pytest.raises(ConfigError, match="must return a FitResult"):
        iterative_prune(tiny(), rec.with_(evaluate=lambda m: {"accuracy": 1.0}, finetune=lambda m: m), target=0.5)
    with pytest.raises(ConfigError, match="recovery.finetune must be a prunekit.schedule.FitFinetune"):
        agp_prune(tiny(), rec.with_(finetune=lambda m: None), final=0.5)
    with pytest.raises(ConfigError, match="granularity 'weight' only"):
        agp_prune(tiny(), Recovery.default(toy_data(), EX, granularity="channel"), final=0.5)
    with pytest.raises(ConfigError, match="objective 'latency' needs granularity 'channel'"):
        budget_search(tiny(), rec.with_(evaluate=lambda m: {"accuracy": 1.0}), objective="latency")
    with pytest.raises(ConfigError, match="schedule must be one of oneshot, agp, iterative"):
        budget_search(tiny(), rec, schedule="gradual")


def test_default_finetune_trains_only_when_configured_and_reports_interrupts():
    data = toy_data()
    assert FitFinetune(data, None)(tiny()) is None and FitFinetune(data, FitConfig(epochs=0))(tiny()) is None

    def stop(event, state):
        if event == "step" and state["step"] == 3:
            raise KeyboardInterrupt

    res = FitFinetune(data, FitConfig(epochs=2, batch_size=32))(tiny(), callbacks=[stop])
    assert res.interrupted  # returned, not raised: the schedule records the rows and then stops
    r = Recorder()
    interrupted = Recovery.default(data, EX, finetune=FitConfig(epochs=2, batch_size=32)).with_(
        prune=r.prune, finetune=lambda m: FitFinetune(data, FitConfig(epochs=2, batch_size=32))(m, callbacks=[stop]))
    out = iterative_prune(tiny(), interrupted, target=0.5, rounds=2)
    assert out.interrupted and out.best_round == 0 and len(out.histories) == 1 and out.steps == []
