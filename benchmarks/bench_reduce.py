"""Benchmark: PCA-k then prune vs prune-only vs input-feature pruning, an MLP on Fashion-MNIST (784 inputs).

For each family the MLP is trained, pruned one-shot (global L1, unstructured) at several ratios,
fine-tuned briefly, and measured: test accuracy, params, MACs (dense and non-zero) and latency.
Unstructured pruning leaves dense shapes, so the size metric compared is **non-zero MACs**;
"end-to-end" MACs of a PCA model add the dense 784 x k projection that feeds it (a reduced model
cannot run without it). Latency is of the dense (finalized) model; masks do not speed up dense
matmuls, so it mostly tracks the input dimension.

    python benchmarks/bench_reduce.py            # the reported run
    python benchmarks/bench_reduce.py --quick    # a smoke run in about a minute

Needs ``apt-get install dataset-fashion-mnist`` (files in /usr/share/datasets/fashion-mnist/).
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import prunekit
from prunekit.api import measure  # prunekit.measure can be shadowed by the subpackage of that name
from prunekit.data import load_data
from prunekit.modelutils import clone_model
from prunekit.models import create_model
from prunekit.reduce import ReducedModel, Reducer, reduce_splits
from prunekit.train import FitConfig, evaluate, fit


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="small subset, 1 epoch: a smoke test, not the reported numbers")
    p.add_argument("--train-subset", type=int, default=20000, help="training samples (of 60,000)")
    p.add_argument("--test-subset", type=int, default=None, help="test samples (default: all 10,000)")
    p.add_argument("--epochs", type=int, default=8, help="training epochs of each dense model")
    p.add_argument("--finetune-epochs", type=int, default=2, help="fine-tuning epochs after each pruning")
    p.add_argument("--dims", type=int, nargs="+", default=[16, 32, 64, 128], help="PCA / input-pruning target dims")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99],
                   help="prune ratios (a dense grid, so prune-only's accuracy/MACs frontier is well sampled)")
    p.add_argument("--scopes", nargs="+", default=["global", "local"], help="pruning scopes tried for every family")
    p.add_argument("--whiten", action="store_true", help="whiten the PCA outputs (unit variance per component)")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 128], help="MLP hidden widths")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--tolerance", type=float, default=0.5, help="'equal accuracy' tolerance in points")
    p.add_argument("--json", default=None, help="also write all rows to this JSON file")
    args = p.parse_args()
    if args.quick:
        args.train_subset, args.test_subset, args.epochs, args.finetune_epochs = 3000, 2000, 1, 1
        args.dims, args.ratios, args.scopes = [16, 64], [0.0, 0.9], ["global"]
    return args


def measure_row(family, k, ratio, scope, model, data, example, end_to_end=None):
    acc = evaluate(model, data.x_test, data.y_test, num_classes=data.num_classes)["accuracy"]
    dense = prunekit.finalize(clone_model(model)).eval()  # masks folded in: same outputs, plain modules for timing
    m = measure(dense, example, latency=True, batch_sizes=(64,), repeats=30, warmup=5)
    row = {"family": family, "k": k, "ratio": ratio, "scope": scope, "accuracy": round(100 * acc, 2), "params": m["params"],
           "nonzero_params": m["nonzero_params"], "macs": m["macs"], "nonzero_macs": m["nonzero_macs"],
           "latency_ms_b1": round(m["latency_ms"], 4), "latency_ms_b64": round(m["latency_ms_b64"], 4)}
    row["e2e_nonzero_macs"] = row["nonzero_macs"]
    if end_to_end is not None:  # (reducer, raw example): the dense projection runs in front of every reduced model
        reducer, raw_example = end_to_end
        e = measure(ReducedModel(reducer, dense).eval(), raw_example, latency=True,
                             batch_sizes=(64,), repeats=30, warmup=5)
        row.update(e2e_nonzero_macs=e["nonzero_macs"], e2e_latency_ms_b1=round(e["latency_ms"], 4),
                   e2e_latency_ms_b64=round(e["latency_ms_b64"], 4))
    return row


def prune_sweep(family, k, trained, data, example, args, end_to_end=None):
    rows = []
    ft = FitConfig(epochs=args.finetune_epochs, lr=3e-4, batch_size=128, seed=1)
    settings = [(0.0, "-")] if 0.0 in args.ratios else []
    settings += [(r, scope) for scope in args.scopes for r in args.ratios if r > 0]
    for ratio, scope in settings:
        if ratio == 0:
            model = trained
        else:
            model = prunekit.prune(trained, example, granularity="weight", ratio=ratio, scope=scope)
            if args.finetune_epochs > 0:
                fit(model, data, ft)
        rows.append(measure_row(family, k, ratio, scope, model, data, example, end_to_end))
        print(fmt_row(rows[-1]), flush=True)
    return rows


def train_mlp(data, in_features, args):
    torch.manual_seed(0)
    model = create_model("mlp", in_features=in_features, hidden=list(args.hidden), num_classes=data.num_classes)
    fit(model, data, FitConfig(epochs=args.epochs, lr=1e-3, batch_size=128, seed=0))
    return model


def run(args):
    raw = load_data(name="fashion_mnist", layout="flat", train_subset=args.train_subset, test_subset=args.test_subset,
                    val_subset=5000 if not args.quick else 1000)
    d = raw.x_train.shape[1]
    print(f"Fashion-MNIST: train {len(raw.x_train)}, val {len(raw.x_val)}, test {len(raw.x_test)}, {d} features; "
          f"MLP hidden {args.hidden}; {args.epochs} epochs dense training, {args.finetune_epochs} fine-tune epochs "
          f"per prune ratio; global L1 unstructured pruning; torch threads {args.threads}", flush=True)
    print(header(), flush=True)
    rows = []
    base = train_mlp(raw, d, args)
    rows += prune_sweep("prune-only", d, base, raw, raw.x_test[:1], args)
    for k in args.dims:
        reducer = Reducer("pca", k, whiten=args.whiten)
        data = reduce_splits(raw, reducer)
        model = train_mlp(data, k, args)
        rows += prune_sweep("pca+prune", k, model, data, data.x_test[:1], args, end_to_end=(reducer, raw.x_test[:1]))
    for k in args.dims:
        rows += input_pruning(base, raw, k, args)
    return rows


def input_pruning(base, raw, k, args):
    """Learned feature selection: prune the first Linear's inputs to k (structured), fine-tune, then weight-prune."""
    d = raw.x_train.shape[1]
    try:
        selected = prunekit.prune(base, raw.x_test[:1], granularity="input", ratio=1 - k / d)
    except Exception as exc:  # the structured engine may not support it in this checkout: say so, keep going
        print(f"input-feature pruning to {k}: unavailable ({type(exc).__name__}: {exc})", flush=True)
        return []
    fit(selected, raw, FitConfig(epochs=args.finetune_epochs + 1, lr=1e-3, batch_size=128, seed=2))
    return prune_sweep("input-prune", k, selected, raw, raw.x_test[:1], args)


COLS = ("family", "k", "ratio", "scope", "accuracy", "nonzero_params", "nonzero_macs", "e2e_nonzero_macs", "latency_ms_b1",
        "latency_ms_b64")


def header() -> str:
    return " | ".join(f"{c:>14}" for c in COLS)


def fmt_row(row) -> str:
    return " | ".join(f"{row.get(c, ''):>14}" for c in COLS)


def goal(rows, tol):
    """Each PCA+prune model against prune-only: (row, band match, frontier match).

    band: the cheapest prune-only model whose accuracy is within ``tol`` points of the PCA model's
    (equal accuracy, literally). frontier: the cheapest prune-only model at least as accurate
    minus ``tol`` (what prune-only must spend to reach that accuracy; it may be more accurate), only for
    PCA models inside the accuracy range the prune-only grid covers.
    """
    prune_only = [r for r in rows if r["family"] == "prune-only"]
    floor = min(p["accuracy"] for p in prune_only)  # below this, prune-only was never sampled: no fair frontier
    out = []
    for r in (r for r in rows if r["family"] == "pca+prune"):
        band = [p for p in prune_only if abs(p["accuracy"] - r["accuracy"]) <= tol]
        front = [p for p in prune_only if p["accuracy"] >= r["accuracy"] - tol] if r["accuracy"] >= floor - tol else []
        cheapest = lambda ps: min(ps, key=lambda p: p["nonzero_macs"]) if ps else None  # noqa: E731
        out.append((r, cheapest(band), cheapest(front)))
    return out


def ratio_text(r, p) -> str:
    if p is None:
        return "no prune-only model"
    return (f"prune-only {p['scope']} r={p['ratio']} acc {p['accuracy']} nzMACs {p['nonzero_macs']}: "
            f"{p['nonzero_macs'] / r['nonzero_macs']:.2f}x model / {p['nonzero_macs'] / r['e2e_nonzero_macs']:.2f}x e2e")


def report_goal(rows, tol):
    print(f"\nGoal check (non-zero MACs; 'model' = the MLP on k inputs, 'e2e' adds the dense 784 x k PCA projection):")
    best = {"band": [0.0, 0.0], "frontier": [0.0, 0.0]}
    for r, band, front in goal(rows, tol):
        print(f"  pca-{r['k']} {r['scope']} r={r['ratio']} acc {r['accuracy']} nzMACs {r['nonzero_macs']} "
              f"(e2e {r['e2e_nonzero_macs']})\n      equal acc (+-{tol}): {ratio_text(r, band)}"
              f"\n      frontier (>= acc-{tol}): {ratio_text(r, front)}")
        for name, p in (("band", band), ("frontier", front)):
            if p is not None:
                best[name][0] = max(best[name][0], p["nonzero_macs"] / r["nonzero_macs"])
                best[name][1] = max(best[name][1], p["nonzero_macs"] / r["e2e_nonzero_macs"])
    for name, (model_x, e2e_x) in best.items():
        print(f"best {name}: {model_x:.2f}x smaller (model alone), {e2e_x:.2f}x (end-to-end); goal 3x: "
              f"{'met' if model_x >= 3 else 'NOT met'} (model), {'met' if e2e_x >= 3 else 'NOT met'} (end-to-end)")


def main():
    args = parse_args()
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = run(args)
    report_goal(rows, args.tolerance)
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
