"""Latency-targeted vs MACs-targeted channel pruning: Fashion-MNIST ResNet-20 and VGG-6, plus ResNet-50 timing.

Per small model (trained once, cached): MACs-targeted local and global pruning (prunekit, ``macs_target``),
latency-targeted pruning (``latency_target`` of the dense latency at batch 64, on the table measured on this
machine) and, where installed, Torch-Pruning local / global at the same MACs; each gets the same one-epoch
fine-tune (distilled from the dense model). Reported: test accuracy, MACs cut, measured speed-up at batch 1 and 64
(every variant in the same shuffled interleaved rounds, benchmarks/timing.py side_by_side), efficiency = speed-up /
MACs cut, and the latency model's prediction error (its predicted / dense ratio vs the measured one). ResNet-50
(prunekit.models, the torchvision layout, random weights) is timed only: MACs-targeted vs latency-targeted at the
same latency fraction, efficiency at batch --r50-batch.

``--blocks-first R`` adds "blocks + latency" on models with residual blocks: R of the identity-skip blocks removed
whole first (granularity='block', residual_norm), then channels to the same fraction of the dense latency.
``--gradual N`` adds "latency gradual": the pruning spread over the fine-tune, N rounds of a latency_target prune
to target^(1/N) of the current model, each followed by 1/N of the fine-tune's steps.

"VGG-6" is prunekit.models' vgg_small: five 3x3 conv-BN-ReLU layers and one hidden Linear before the classifier.

Usage: python benchmarks/bench_latency.py [--quick] [--models resnet20,vgg_small] [--target 0.5] [--threads 1]
       [--rounds 15] [--criterion l2] [--calibration-batches 16] [--layer-floor F] [--blocks-first R]
       [--latency-allocation scores|measured] [--gradual N] [--variants V,...] [--heap-reserve GB] [--no-resnet50] [--out DIR]
Data: apt-get install dataset-fashion-mnist (gzipped IDX in /usr/share/datasets/fashion-mnist/).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

import prunekit
from prunekit.cli.console import table as fmt_table
from prunekit.data import load_data
from prunekit.data.config import DataConfig
from prunekit.measure import count_macs
from prunekit.modelutils import clone_model
from prunekit.models import create_model
from prunekit.structured.latency import latency_report
from prunekit.train import FitConfig, fit
from prunekit.train.feature_distill import FeatureDistillConfig
from baselines import accuracy as fraction_correct, cached_fit
from timing import side_by_side, verdict

SGD = dict(optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, batch_size=128, restore_best=False)
# per model: training epochs (full / quick) and training subset (full / quick)
SETUPS = {"resnet20": dict(epochs=(12, 1), subset=(None, 3000)), "vgg_small": dict(epochs=(10, 1), subset=(None, 3000))}
DISTILL = FeatureDistillConfig(temperature=4.0, alpha=0.5)
GOALS = {"speedup": 2.0, "drop_points": 0.5, "prediction": 0.10, "r50_efficiency": 0.95}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet20,vgg_small")
    ap.add_argument("--quick", action="store_true", help="training subsets, one epoch, fewer rounds (a smoke run)")
    ap.add_argument("--target", type=float, default=0.5, help="fraction of dense latency (and of MACs) to keep")
    ap.add_argument("--batch", type=int, default=64, help="batch the latency target is measured at")
    ap.add_argument("--batches", default="1,64", help="batches the speed-ups are measured at")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: the reliable count on a shared machine)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved timing rounds")
    ap.add_argument("--ft-epochs", type=int, default=1, help="fine-tune epochs of every pruned variant")
    ap.add_argument("--criterion", default="l2", help="channel criterion of every prunekit variant (taylor, "
                    "activation, ...: calibrated on --calibration-batches training batches of --batch)")
    ap.add_argument("--calibration-batches", type=int, default=16)
    ap.add_argument("--layer-floor", type=float, default=None, help="layer_floor of the latency-targeted variants "
                    "(every group keeps at least this fraction of its channels; default: prunekit's)")
    ap.add_argument("--latency-allocation", choices=("scores", "measured"), default="scores",
                    help="latency_allocation of the latency-targeted variants ('measured': every candidate width "
                         "priced on --calibration-batches training batches)")
    ap.add_argument("--allocation-loss", choices=("output", "ce"), default="output",
                    help="--latency-allocation measured: price by the outputs' relative change (no loss_fn) or by "
                         "the growth of the cross-entropy on the batches' labels (loss_fn=cross_entropy)")
    ap.add_argument("--variants", default=None, help="comma-separated subset of the small models' pruned variants "
                    "(macs local, macs global, latency, torch-pruning local, torch-pruning global); default: all")
    ap.add_argument("--blocks-first", type=float, default=None, metavar="R",
                    help="add a 'blocks + latency' variant (models with residual blocks): granularity='block' removes "
                         "R of the identity-skip blocks (residual_norm on --calibration-batches training batches), "
                         "then latency_target takes the rest of the way to --target of the dense latency")
    ap.add_argument("--gradual", type=int, default=None, metavar="N",
                    help="add a 'latency gradual' variant: the fine-tune's steps split in N parts, each after a "
                         "latency_target prune of target^(1/N) of the current model (the same steps in all as the "
                         "one-shot variants, so the pruning is spread over the fine-tune)")
    ap.add_argument("--heap-reserve", type=float, default=0.0, metavar="GB",
                    help="first leave this much free space inside the process's glibc heap (as in a process that "
                         "trained models before: large tensors then come from it, without page faults) to check the "
                         "latency model in that allocator state; 0: as the process starts")
    ap.add_argument("--no-resnet50", action="store_true")
    ap.add_argument("--train-only", action="store_true", help="train (or load) the dense baselines into --cache and "
                    "stop: run one process per model to train them side by side, then the benchmark on a quiet machine")
    ap.add_argument("--r50-size", type=int, default=None, help="ResNet-50 input size (default 224; --quick 64)")
    ap.add_argument("--r50-batch", type=int, default=None, help="ResNet-50 batch (default 16; --quick 2)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--data", default=None, help="fashion-mnist folder (default /usr/share/datasets/fashion-mnist/)")
    ap.add_argument("--cache", default="runs/bench_latency/baselines")
    ap.add_argument("--out", default="runs/bench_latency")
    return ap.parse_args()


def pick(args, pair):
    return pair[1 if args.quick else 0]


def accuracy(model, x, y) -> float:
    """Test accuracy in percent."""
    return 100.0 * fraction_correct(model, x, y)


def trained(name: str, data, args) -> torch.nn.Module:
    """The dense baseline, cached by everything that shapes it."""
    s = SETUPS[name]
    torch.manual_seed(args.seed)
    model = create_model(name, in_channels=data.x_train.shape[1], num_classes=data.num_classes)
    cfg = FitConfig(epochs=pick(args, s["epochs"]), seed=args.seed, **SGD)
    return cached_fit(name, model, data, cfg, args.cache, [name, len(data.x_train), args.seed])


def torch_pruning_variants(dense, ex, target_macs: float) -> dict:
    """Torch-Pruning's magnitude pruner, local and global, to the same MACs (empty when it is not installed)."""
    try:
        import torch_pruning as tp
    except ImportError:
        return {}
    out = {}
    base = count_macs(dense, ex)["macs"]
    for scope in ("local", "global"):
        model = clone_model(dense)
        lo, hi = 0.0, 0.95
        for _ in range(10):  # bisect the channel ratio until the MACs match
            mid = (lo + hi) / 2
            trial = clone_model(dense)
            pruner = tp.pruner.MagnitudePruner(trial, ex, importance=tp.importance.MagnitudeImportance(p=2),
                                               pruning_ratio=mid, global_pruning=scope == "global",
                                               ignored_layers=[m for m in trial.modules()
                                                               if isinstance(m, torch.nn.Linear)
                                                               and m.out_features == 10])
            pruner.step()
            if count_macs(trial, ex)["macs"] <= target_macs * base:
                hi, model = mid, trial
            else:
                lo = mid
        out[f"torch-pruning {scope}"] = model
    return out


def latency_options(args) -> dict:
    """The ``prunekit.prune`` options of every latency-targeted variant."""
    floor = {} if args.layer_floor is None else {"layer_floor": args.layer_floor}
    alloc = {} if args.latency_allocation == "scores" else {"latency_allocation": args.latency_allocation}
    return {"latency_target": args.target, "latency_threads": args.threads, **floor, **alloc}


def calibration(data, args) -> dict:
    """``--calibration-batches`` training batches of ``--batch`` as ``(inputs, labels)`` pairs, as prune keywords."""
    n = args.calibration_batches * args.batch
    return {"calibration": [((data.x_train[i:i + args.batch],), data.y_train[i:i + args.batch])
                            for i in range(0, n, args.batch)], "calibration_batches": args.calibration_batches}


def allocation_data(args, data) -> dict:
    """The calibration (and loss) a measured latency allocation reads."""
    if args.latency_allocation == "scores":
        return {}
    out = calibration(data, args)
    if args.allocation_loss == "ce":
        out["loss_fn"] = torch.nn.functional.cross_entropy
    return out


def blocks_then_latency(dense, ex, data, args, lat_kw: dict) -> dict:
    """Depth, then width: the weakest residual blocks removed whole (their time and MACs fall together), then a
    channel latency target for what is left of --target, measured against the dense model in the same rounds."""
    try:
        blocks = prunekit.prune(dense, ex, granularity="block", ratio=args.blocks_first, criterion="residual_norm",
                                **calibration(data, args))
    except prunekit.PruningError as exc:
        step(f"blocks + latency skipped: {exc}")
        return {}
    with torch.inference_mode():
        ms = side_by_side({"dense": lambda: dense(ex[0]), "blocks": lambda: blocks(ex[0])}, rounds=9,
                          threads=args.threads, seed=args.seed)
    rest = args.target * ms["dense"] / ms["blocks"]
    step(f"blocks + latency: {args.blocks_first:g} of the blocks removed, {ms['blocks'] / ms['dense']:.3f} of dense; "
         f"channels to {rest:.3f} of that")
    if rest >= 1.0:
        return {"blocks + latency": blocks}
    opts = {**latency_options(args), "latency_target": rest}
    return {"blocks + latency": prunekit.prune(blocks, ex, granularity="channel", criterion=args.criterion, **opts,
                                               **lat_kw)}


def gradual_latency(dense, ex, ex1, data, args, lat_kw: dict, teacher, ft: FitConfig, name: str):
    """Prune and fine-tune in --gradual rounds: round k cuts the current model to target^(1/N) of its latency, then
    trains 1/N of the fine-tune's steps (a cosine schedule per round; the same steps and distillation in all)."""
    n = args.gradual
    per_epoch = -(-len(data.x_train) // ft.batch_size)
    steps = max(1, per_epoch * ft.epochs // n)
    model = dense
    for k in range(n):
        step(f"{name}: latency gradual round {k + 1}/{n}: latency_target {args.target ** (1 / n):.3f} of the current "
             f"model, then {steps} fine-tune steps")
        opts = {**latency_options(args), "latency_target": args.target ** (1 / n)}
        model = prunekit.prune(model, ex, granularity="channel", criterion=args.criterion, **opts, **lat_kw)
        cfg = FitConfig(**{**ft.__dict__, "epochs": 1, "max_steps_per_epoch": steps, "seed": args.seed + k})
        fit(model, data, cfg, distiller=DISTILL.build(teacher, model, ex1), stage=f"fine-tune {name} gradual {k + 1}")
    return model.eval()


def small_data(name: str, args):
    return load_data(DataConfig(name="fashion_mnist", path=args.data, layout="image",
                                train_subset=pick(args, SETUPS[name]["subset"]), val_fraction=0.1, seed=args.seed))


def step(msg: str) -> None:
    """One progress line (the benchmark runs for tens of minutes)."""
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def small_model(name: str, args) -> dict:
    data = small_data(name, args)
    torch.manual_seed(args.seed)
    step(f"{name}: dense baseline (trained once, cached in {args.cache})")
    dense = trained(name, data, args).eval()
    step(f"{name}: pruning (MACs local / global, latency target {args.target:g}, Torch-Pruning where installed)")
    ex = (data.x_train[:args.batch].clone(),)  # the latency target's conditions: batch 64 at 28x28
    ex1 = (data.x_train[:1].clone(),)
    data_driven = args.criterion not in ("l1", "l2", "fpgm", "bn_scale", "random")
    data_kw = calibration(data, args) if data_driven else {}
    wanted = None if args.variants is None else {v.strip() for v in args.variants.split(",")}
    variants = {}
    for scope in ("local", "global"):
        if wanted is None or f"macs {scope}" in wanted:
            variants[f"macs {scope}"] = prunekit.prune(dense, ex1, granularity="channel", criterion=args.criterion,
                                                       macs_target=args.target, scope=scope, **data_kw)
    t = time.perf_counter()
    lat_kw = {**data_kw, **allocation_data(args, data)}
    variants["latency"] = prunekit.prune(dense, ex, granularity="channel", criterion=args.criterion,
                                         **latency_options(args), **lat_kw)
    prune_s = time.perf_counter() - t
    if args.blocks_first:
        variants.update(blocks_then_latency(dense, ex, data, args, lat_kw))
    variants.update({k: v for k, v in torch_pruning_variants(dense, ex1, args.target).items()
                     if wanted is None or k in wanted})
    rep = latency_report(variants["latency"])
    teacher = clone_model(dense).eval()
    ft = FitConfig(epochs=args.ft_epochs, seed=args.seed, **{**SGD, "lr": SGD["lr"] * 0.2})
    for label, model in variants.items():
        step(f"{name}: fine-tune {label} ({args.ft_epochs} epoch(s))")
        fit(model, data, ft, distiller=DISTILL.build(teacher, model, ex1), stage=f"fine-tune {name} {label}")
        model.eval()
    if args.gradual:  # pruned and fine-tuned in turns: trained inside
        variants["latency gradual"] = gradual_latency(dense, ex, ex1, data, args, lat_kw, teacher, ft, name)
    rows = {"dense": dict(model=dense)} | {k: dict(model=m) for k, m in variants.items()}
    macs0 = count_macs(dense, ex1)["macs"]
    for row in rows.values():
        row["acc"] = accuracy(row["model"], data.x_test, data.y_test)
        row["macs_cut"] = macs0 / count_macs(row["model"], ex1)["macs"]
    speed = {}
    for b in [int(v) for v in args.batches.split(",")]:
        step(f"{name}: timing {len(rows)} variants at batch {b}, {args.rounds} interleaved rounds")
        xb = data.x_test[:b]
        with torch.inference_mode():
            ms = side_by_side({k: (lambda m=r["model"]: m(xb)) for k, r in rows.items()}, rounds=args.rounds,
                              threads=args.threads, seed=args.seed)
        speed[b] = {k: ms["dense"] / v for k, v in ms.items()}
    measured_ratio = 1.0 / speed[args.batch]["latency"] if args.batch in speed else None
    predicted_ratio = rep["predicted_ms"] / rep["dense_ms"]
    return dict(name=name, rows=rows, speed=speed, report=rep, prune_s=prune_s, predicted_ratio=predicted_ratio,
                measured_ratio=measured_ratio, dense_acc=rows["dense"]["acc"])


def print_small(res: dict, args) -> dict:
    batches = sorted(res["speed"])
    head = ["variant", "test acc", "drop pt", "MACs cut"] + [f"b{b} speed-up" for b in batches] + \
           [f"b{b} eff." for b in batches]
    lines = []
    for k, r in res["rows"].items():
        lines.append([k, f"{r['acc']:.2f}", f"{res['dense_acc'] - r['acc']:+.2f}", f"{r['macs_cut']:.2f}x"]
                     + [f"{res['speed'][b][k]:.2f}x" for b in batches]
                     + [f"{res['speed'][b][k] / r['macs_cut']:.2f}" for b in batches])
    print(f"\n== {res['name']}: target {args.target:.0%} of dense latency at batch {args.batch}, {args.threads} "
          f"thread(s); latency pruning step {res['prune_s']:.1f} s (table: {res['report']['timer_calls']} timer calls)")
    print(fmt_table(lines, head))
    widths = {gi: g["kept"] for gi, g in res["report"]["groups"].items()}
    print(f"chosen widths per group: {widths}")
    err = (res["predicted_ratio"] / res["measured_ratio"] - 1.0) if res["measured_ratio"] else float("nan")
    in_prune = res["report"].get("error")
    print(f"latency model: predicted {res['predicted_ratio']:.3f} of dense, measured {res['measured_ratio']:.3f} "
          f"(error {err:+.1%}); in prunekit.prune: predicted {res['report']['predicted_ms']:.2f} ms vs measured "
          f"{res['report'].get('measured_ms', float('nan')):.2f} ms ({(in_prune or 0):+.1%})")
    for i, c in enumerate(res["report"].get("checks") or []):
        print(f"  check {i + 1}: aimed at {c['aim']:.3f}, predicted {c['predicted']:.3f}, measured {c['measured']:.3f} "
              f"+- {c['stderr']:.3f} of dense")
    lat = res["rows"]["latency"]
    drop = res["dense_acc"] - lat["acc"]
    s64 = res["speed"].get(args.batch, {}).get("latency", float("nan"))
    goals = {"speed-up >= 2.0x at batch 64": s64 >= GOALS["speedup"],
             "accuracy within 0.5 pt": drop <= GOALS["drop_points"], "prediction within 10%": abs(err) <= 0.10}
    for g, ok in goals.items():
        print(f"goal {g}: {verdict(ok)}")
    return {"speed": res["speed"], "acc": {k: r["acc"] for k, r in res["rows"].items()},
            "macs_cut": {k: r["macs_cut"] for k, r in res["rows"].items()}, "prediction_error": err,
            "goals": {g: bool(ok) for g, ok in goals.items()}, "latency": res["report"]}


def resnet50(args) -> dict:
    """ResNet-50 timing only: MACs-targeted local / global and latency-targeted at the same fraction."""
    size = args.r50_size or (64 if args.quick else 224)
    args.r50_batch = args.r50_batch or (2 if args.quick else 16)
    torch.manual_seed(args.seed)
    dense = create_model("resnet50", num_classes=1000).eval()
    ex = (torch.randn(args.r50_batch, 3, size, size),)
    ex1 = (ex[0][:1].clone(),)
    step(f"resnet50: latency-targeted pruning at batch {args.r50_batch}, {size} px (the table is timed first)")
    t = time.perf_counter()
    variants = {"latency": prunekit.prune(dense, ex, granularity="channel", criterion=args.criterion,
                                          **latency_options(args))}
    prune_s = time.perf_counter() - t
    for scope in ("local", "global"):
        variants[f"macs {scope}"] = prunekit.prune(dense, ex1, granularity="channel", criterion=args.criterion,
                                                  macs_target=args.target, scope=scope)
    rows = {"dense": dense, **variants}
    macs0 = count_macs(dense, ex1)["macs"]
    cut = {k: macs0 / count_macs(m, ex1)["macs"] for k, m in rows.items()}
    with torch.inference_mode():
        ms = side_by_side({k: (lambda m=m: m(ex[0])) for k, m in rows.items()}, rounds=max(5, args.rounds // 3),
                          threads=args.threads, seed=args.seed)
    speed = {k: ms["dense"] / v for k, v in ms.items()}
    rep = latency_report(variants["latency"])
    print(f"\n== resnet50 (random weights, {size}x{size}, batch {args.r50_batch}, {args.threads} thread(s)); latency "
          f"pruning step {prune_s:.0f} s")
    print(fmt_table([[k, f"{cut[k]:.2f}x", f"{speed[k]:.2f}x", f"{speed[k] / cut[k]:.2f}"] for k in rows],
                    ["variant", "MACs cut", f"b{args.r50_batch} speed-up", "efficiency"]))
    err = (rep["predicted_ms"] / rep["dense_ms"]) * speed["latency"] - 1.0
    print(f"latency model: predicted {rep['predicted_ms'] / rep['dense_ms']:.3f} of dense, measured "
          f"{1 / speed['latency']:.3f} (error {err:+.1%})")
    ok = speed["latency"] / cut["latency"] >= GOALS["r50_efficiency"]
    print(f"goal speed-up >= 0.95x of the MACs cut (latency-targeted): {verdict(ok)}")
    print(f"goal prediction within 10%: {verdict(abs(err) <= GOALS['prediction'])}")
    return {"macs_cut": cut, "speed": speed, "prediction_error": err, "goal_efficiency": bool(ok),
            "goal_prediction": bool(abs(err) <= GOALS["prediction"]), "latency": rep}


def reserve_heap(gb: float) -> torch.Tensor:
    """Leave ``gb`` of free space inside glibc's heap: a 20 MB tensor freed raises the dynamic mmap threshold, so the
    next ones come from the heap; a small tensor allocated above them keeps the heap from being trimmed when they
    are freed. Returns that small tensor (the state lasts while it lives)."""
    torch.empty(5_000_000)  # allocated and freed at once
    chunks = [torch.empty(5_000_000).fill_(1.0) for _ in range(int(gb * 1e9 / 20e6))]
    pin = torch.ones(16)
    del chunks
    return pin


def main() -> None:
    args = parse()
    pin = reserve_heap(args.heap_reserve) if args.heap_reserve > 0 else None  # noqa: F841 (kept alive)
    if args.quick:
        args.rounds = min(args.rounds, 5)
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = {}
    names = [n for n in args.models.split(",") if n]
    if args.train_only:
        for name in names:
            trained(name, small_data(name, args), args)
        print(f"baselines in {args.cache} ({time.perf_counter() - t0:.0f} s)")
        return
    for name in names:
        results[name] = print_small(small_model(name, args), args)
    if not args.no_resnet50:
        results["resnet50"] = resnet50(args)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "bench_latency.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"\n{time.perf_counter() - t0:.0f} s in all; results in {args.out}/bench_latency.json")


if __name__ == "__main__":
    main()
