"""Accuracy-budgeted pruning on Fashion-MNIST: LeNet-300-100 (weight sparsity) and ResNet-20 (MACs) under a 0.5-point budget.

Each model is trained, then ``prunekit.search.budget_search`` bisects the global pruning ratio:
every probe prunes a fresh copy (one-shot, AGP or in a few iterative rounds), recovers with
short fine-tunes (optionally distilled from the unpruned model) and must stay within ``--budget`` points of the unpruned model's
*validation* accuracy. Test accuracy is reported before / after, never used for choosing.

Usage: python benchmarks/bench_budget.py [--quick] [--models lenet300_100,resnet20] [--budget 0.5]
       [--train-subset N] [--epochs E] [--recovery oneshot|agp|iterative] [--rounds K] [--recovery-epochs R]
       [--distill yes|no] [--max-probes P] [--tol T] [--threads T] [--recovery-lr LR] [--cache DIR] [--retrain]
       [--out DIR]
The trained baselines are cached under --cache (keyed by model, data and training settings).
Data: apt-get install dataset-fashion-mnist (gzipped IDX in /usr/share/datasets/fashion-mnist/).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import time
from dataclasses import asdict
from pathlib import Path

import torch

from prunekit.api import measure
from prunekit.io.checkpoint import load as load_checkpoint, save as save_checkpoint
from prunekit.cli.console import TqdmProgress, table
from prunekit.data import load_data
from prunekit.data.config import DataConfig
from prunekit.modelutils import clone_model
from prunekit.models import create_model
from prunekit.search import Recovery, budget_search
from prunekit.train import FitConfig, evaluate, fit
from prunekit.train.feature_distill import FeatureDistillConfig
from prunekit.unstructured import global_sparsity

# per model: data layout, granularity, objective, training and recovery settings (full run / --quick)
# A recovery fine-tune never picks its best epoch on the validation split (restore_best=False: the last epoch of
# the cosine schedule is kept), so a pruned model's validation accuracy, which the budget judges, is not flattered
# by selection. LeNet's baseline is its last epoch too; ResNet-20's keeps its best validation epoch, which can only
# raise the bar the pruned models must meet.
SETUPS = {
    "lenet300_100": dict(layout="flat", granularity="weight", objective="ratio", lo=0.8, hi=0.99,
                         train=dict(optimizer="adam", lr=1e-3, batch_size=128, restore_best=False),
                         ft=dict(optimizer="adam", lr=1e-3, batch_size=128, restore_best=False),
                         epochs=(20, 6), subset=(None, 20000), val=(None, None), recovery=(10, 3), mode="agp", distill=True,
                         probes=8, tol=0.005),
    "resnet20": dict(layout="image", granularity="channel", objective="macs", lo=0.0, hi=0.9,
                     train=dict(optimizer="sgd", lr=0.1, momentum=0.9, weight_decay=5e-4, batch_size=128, restore_best=True),
                     ft=dict(optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, batch_size=128, restore_best=False),
                     epochs=(15, 3), subset=(None, 6000), val=(None, 3000), recovery=(2, 1), mode="oneshot", distill=True,
                     probes=6, tol=0.02),
}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="lenet300_100,resnet20")
    ap.add_argument("--quick", action="store_true", help="training subsets and short epochs (minutes, not hours)")
    ap.add_argument("--budget", type=float, default=0.5, help="max validation-accuracy drop in points")
    ap.add_argument("--train-subset", type=int, default=None, help="cap training samples (default per model / --quick)")
    ap.add_argument("--val-subset", type=int, default=None, help="cap validation samples (default per model / --quick)")
    ap.add_argument("--epochs", type=int, default=None, help="training epochs (default per model / --quick)")
    ap.add_argument("--recovery-epochs", type=int, default=None, help="fine-tune epochs per probe")
    ap.add_argument("--max-probes", type=int, default=None, help="probes per search (default: 8 LeNet, 6 ResNet-20)")
    ap.add_argument("--recovery", choices=["oneshot", "agp", "iterative"], default=None,
                    help="how a probe reaches its ratio (default: agp for LeNet, oneshot for the CNN)")
    ap.add_argument("--tol", type=float, default=None,
                    help="bisection stops when the ratio bracket is narrower (default: 0.005 LeNet, 0.02 ResNet-20)")
    ap.add_argument("--rounds", type=int, default=3, help="recovery iterative: prune / fine-tune rounds per probe")
    ap.add_argument("--distill", choices=["yes", "no"], default=None,
                    help="logit distillation from the unpruned model during recovery (default: yes)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="fashion-mnist folder (default /usr/share/datasets/fashion-mnist/)")
    ap.add_argument("--recovery-lr", type=float, default=None, help="peak learning rate of the recovery fine-tunes")
    ap.add_argument("--cache", default="runs/bench_budget/baselines", help="folder of cached trained baselines")
    ap.add_argument("--retrain", action="store_true", help="train the baseline even if a cached one matches")
    ap.add_argument("--out", default="runs/bench_budget")
    return ap.parse_args()


def pick(args, setup: dict, key: str, override):
    return override if override is not None else setup[key][1 if args.quick else 0]


def run_model(name: str, args, progress) -> dict:
    s = SETUPS[name]
    subset = pick(args, s, "subset", args.train_subset)
    epochs = pick(args, s, "epochs", args.epochs)
    recovery = pick(args, s, "recovery", args.recovery_epochs)
    distill = s["distill"] if args.distill is None else args.distill == "yes"
    mode = args.recovery or s["mode"]
    tol = s["tol"] if args.tol is None else args.tol
    max_probes = s["probes"] if args.max_probes is None else args.max_probes
    data = load_data(DataConfig(name="fashion_mnist", path=args.data, layout=s["layout"], train_subset=subset,
                                val_subset=pick(args, s, "val", args.val_subset), val_fraction=0.15, seed=args.seed))
    train_cfg = FitConfig(epochs=epochs, seed=args.seed, **s["train"])
    ft_cfg = FitConfig(epochs=recovery, seed=args.seed, **{**s["ft"], **({"lr": args.recovery_lr} if args.recovery_lr else {})})
    print(f"\n== {name}: train {len(data.x_train)} / val {len(data.x_val)} / test {len(data.x_test)} samples, "
          f"{epochs} epochs ({describe(train_cfg)}); recovery {recovery} epochs per fine-tune ({describe(ft_cfg)}); "
          f"budget {args.budget} val points; {s['granularity']} pruning, objective {s['objective']}, "
          f"probe recovery {mode}" + (f" ({args.rounds} rounds)" if mode == "iterative" else "") +
          f", distillation {'on' if distill else 'off'}; bisection over [{s['lo']}, {s['hi']}], tol {tol}, "
          f"at most {max_probes} probes")
    torch.manual_seed(args.seed)
    kw = {"in_features": data.x_train[0].numel()} if s["layout"] == "flat" else {"in_channels": data.x_train.shape[1]}
    model = create_model(name, num_classes=data.num_classes, **kw)
    # the trained baseline is cached by everything that shapes it, so searches can be rerun without retraining
    key = hashlib.sha256(json.dumps([name, subset, len(data.x_val), args.seed, asdict(train_cfg)], sort_keys=True,
                                    default=str).encode()).hexdigest()[:12]
    cached = Path(args.cache) / f"{name}-{key}.safetensors"
    hist, train_s, hist_fresh = [], 0.0, False
    if cached.exists() and not args.retrain:
        model = load_checkpoint(cached, model)
        meta = json.loads(cached.with_suffix(".json").read_text()) if cached.with_suffix(".json").exists() else {}
        hist, train_s = meta.get("train_history", []), meta.get("train_s", 0.0)
        print(f"baseline loaded from {cached} (use --retrain to train again)")
    else:
        t0 = time.perf_counter()
        hist, hist_fresh = fit(model, data, train_cfg, progress=progress, stage=f"train {name}").history, True
        train_s = time.perf_counter() - t0
        cached.parent.mkdir(parents=True, exist_ok=True)
        save_checkpoint(model, cached)
        cached.with_suffix(".json").write_text(json.dumps({"train_history": hist, "train_s": train_s}, default=str))
    ex = data.example_inputs(1)
    before = {"test": evaluate(model, data.x_test, data.y_test, num_classes=10),
              "val": evaluate(model, data.x_val, data.y_val, num_classes=10), **measure(model, ex, latency=False)}
    print(f"trained in {train_s:.0f} s{'' if hist_fresh else ' (cached)'}: val {100 * before['val']['accuracy']:.2f}%  "
          f"test {100 * before['test']['accuracy']:.2f}%")
    t0 = time.perf_counter()
    recovery = Recovery.default(data, ex, granularity=s["granularity"],
                                criterion="l1" if s["granularity"] == "weight" else "l2", finetune=ft_cfg,
                                teacher=clone_model(model).eval() if distill else None,
                                distill=FeatureDistillConfig(temperature=4.0, alpha=0.5) if distill else None,
                                measure_latency=s["objective"] == "latency", progress=progress, stage="search")
    res = budget_search(model, recovery, max_accuracy_drop=args.budget, objective=s["objective"], lo=s["lo"],
                        hi=s["hi"], tol=tol, max_probes=max_probes, rounds=args.rounds, schedule=mode,
                        progress=progress)
    search_s = time.perf_counter() - t0
    after = {"test": evaluate(res.model, data.x_test, data.y_test, num_classes=10), **measure(res.model, ex, latency=False)}
    out = summarize(name, s, args, before, after, res, dict(subset=subset, epochs=epochs, recovery=recovery, mode=mode,
                                                            distill=distill, train_s=train_s, search_s=search_s,
                                                            history=hist))
    out.update(weight_sparsity=global_sparsity(res.model), tol=tol, max_probes=max_probes)
    print_model(out)
    return out


def describe(cfg: FitConfig) -> str:
    extra = f", momentum {cfg.momentum}" if cfg.optimizer == "sgd" else ""
    wd = f", weight decay {cfg.weight_decay:g}" if cfg.weight_decay else ""
    return f"{cfg.optimizer} lr {cfg.lr:g}{extra}{wd}, {cfg.scheduler} schedule, batch {cfg.batch_size}"


def summarize(name, s, args, before, after, res, run) -> dict:
    return {
        "model": name, "granularity": s["granularity"], "objective": s["objective"], "budget_points": args.budget,
        "train_samples": run["subset"] or "all", "epochs": run["epochs"], "recovery_epochs": run["recovery"],
        "distill": run["distill"], "recovery": run["mode"], "rounds": args.rounds if run["mode"] == "iterative" else None,
        "train_s": round(run["train_s"], 1), "search_s": round(run["search_s"], 1),
        "ratio": res.ratio, "interrupted": res.interrupted, "message": res.message,
        "val_before": before["val"]["accuracy"], "val_after": res.best["val_accuracy"] if res.best else None,
        "val_drop_points": res.best["drop_points"] if res.best else None,
        "test_before": before["test"]["accuracy"], "test_after": after["test"]["accuracy"],
        "test_drop_points": 100 * (before["test"]["accuracy"] - after["test"]["accuracy"]),
        "params_before": before["params"], "params_after": after["params"],
        "nonzero_params_before": before["nonzero_params"], "nonzero_params_after": after["nonzero_params"],
        "macs_before": before["macs"], "macs_after": after["macs"],
        "nonzero_macs_before": before["nonzero_macs"], "nonzero_macs_after": after["nonzero_macs"],
        "macs_reduction": before["macs"] / max(1, after["macs"]),
        "nonzero_macs_reduction": before["nonzero_macs"] / max(1, after["nonzero_macs"]),
        "probes": res.probes, "train_history": run["history"],
    }


def print_model(o: dict) -> None:
    rows = [(p["index"], f"{p['ratio']:.4f}", f"{100 * p['accuracy']:.2f}%", f"{p['drop_points']:+.2f}",
             "yes" if p["ok"] else "no", p["nonzero_params"], p["nonzero_macs"]) for p in o["probes"]]
    print(table(rows, ["probe", "ratio", "val acc", "drop pt", "ok", "non-zero params", "non-zero MACs"]))
    print(f"chosen ratio {o['ratio']:.4f}: weight sparsity {100 * o['weight_sparsity']:.2f}%, "
          f"val {100 * o['val_before']:.2f}% -> {100 * (o['val_after'] or o['val_before']):.2f}% "
          f"(drop {o['val_drop_points'] or 0:.2f} pt), test {100 * o['test_before']:.2f}% -> {100 * o['test_after']:.2f}% "
          f"(drop {o['test_drop_points']:.2f} pt); MACs x{o['macs_reduction']:.2f} dense, "
          f"x{o['nonzero_macs_reduction']:.2f} non-zero; params {o['nonzero_params_before']} -> {o['nonzero_params_after']} "
          f"non-zero; train {o['train_s']:.0f} s, search {o['search_s']:.0f} s")


def main() -> int:
    args = parse()
    torch.set_num_threads(args.threads)
    progress = TqdmProgress()
    print(f"bench_budget: {'quick' if args.quick else 'full'} run, {args.threads} threads, torch {torch.__version__}")
    results = []
    for name in args.models.split(","):
        results.append(run_model(name.strip(), args, progress))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "results": results}, indent=2, default=str))
    print("\nsummary")
    print(table([(r["model"], r["train_samples"], r["epochs"], f"{100 * r['test_before']:.2f}%", f"{r['ratio']:.3f}",
                  f"{100 * r['weight_sparsity']:.1f}%", f"x{r['macs_reduction']:.2f}", f"{r['val_drop_points'] or 0:.2f}",
                  f"{r['test_drop_points']:.2f}") for r in results],
                ["model", "train n", "epochs", "test acc", "ratio", "weight sparsity", "MACs red.", "val drop pt",
                 "test drop pt"]))
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
