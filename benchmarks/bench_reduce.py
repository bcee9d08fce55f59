"""Benchmark: PCA-k then prune vs prune-only vs input-feature pruning, an MLP on Fashion-MNIST (784 inputs).

For each family the MLP is trained, then pruned iteratively (L1, unstructured; global and local scope)
through increasing ratios with a short fine-tune after each step, and measured at every step: test accuracy, params, MACs (dense and non-zero) and latency.
Unstructured pruning leaves dense shapes, so the size metric compared is **non-zero MACs**;
"end-to-end" MACs of a PCA model add the dense 784 x k projection that feeds it (a reduced model
cannot run without it). Latency is of the dense (finalized) model; masks do not speed up dense
matmuls, so it mostly tracks the input dimension.

    python benchmarks/bench_reduce.py            # the reported run
    python benchmarks/bench_reduce.py --quick    # a smoke run in about a minute

Needs ``apt-get install dataset-fashion-mnist`` (files in /usr/share/datasets/fashion-mnist/).

Last full run (defaults, 2-core shared CPU, 1 thread, 444 s; 20k train / 5k val / 10k test, 8 + 3/step epochs):
dense 784-256-128-10 MLP 87.18 %. Non-zero MACs at equal accuracy (prune-only allowed 0.5 point lower):
PCA+prune is 0.5x-1.2x the prune-only size for the MLP alone and 0.1x counting the dense PCA projection, so
the issue's 3x goal is NOT met for unstructured pruning: iterative global magnitude pruning already drops
useless pixels. In dense MACs (what dense kernels run) PCA-128 matches the unpruned accuracy (87.25 %) with
3.5x fewer MACs (1.4x with the projection), PCA-32 reaches 84.9 % with 5.6x (3.5x end-to-end).
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
    p.add_argument("--finetune-epochs", type=int, default=3, help="fine-tuning epochs after each pruning step")
    p.add_argument("--finetune-lr", type=float, default=1e-3, help="fine-tuning learning rate (cosine decay)")
    p.add_argument("--prune-classifier", dest="exclude_classifier", action="store_false",
                   help="also prune the output layer (by default it stays dense in every family)")
    p.add_argument("--dims", type=int, nargs="+", default=[16, 32, 64, 128], help="PCA / input-pruning target dims")
    p.add_argument("--ratios", type=float, nargs="+", default=[0.0, 0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998],
                   help="prune ratios (a dense grid, so prune-only's accuracy/MACs frontier is well sampled)")
    p.add_argument("--scopes", nargs="+", default=["global", "local"], help="pruning scopes tried for every family")
    p.add_argument("--whiten", action="store_true", help="whiten the PCA outputs (unit variance per component)")
    p.add_argument("--hidden", type=int, nargs="+", default=[256, 128], help="MLP hidden widths")
    p.add_argument("--threads", type=int, default=1, help="torch threads (the machine is shared)")
    p.add_argument("--tolerance", type=float, default=0.5, help="'equal accuracy' tolerance in points")
    p.add_argument("--json", default=None, help="also write all rows to this JSON file")
    p.add_argument("--from-json", default=None, help="only print the goal check of rows saved by an earlier --json run")
    args = p.parse_args()
    if args.quick:
        args.train_subset, args.test_subset, args.epochs, args.finetune_epochs = 3000, 2000, 1, 1
        args.dims, args.ratios, args.scopes = [16, 64], [0.0, 0.9], ["global"]
    return args


def measure_row(family, k, ratio, scope, model, data, example, end_to_end=None):
    acc = evaluate(model, data.x_test, data.y_test, num_classes=data.num_classes)["accuracy"]
    dense = prunekit.finalize(clone_model(model)).eval()  # masks folded in: same outputs, plain modules for timing
    m = measure(dense, example, latency=True, batch_sizes=(64,), repeats=30, warmup=5)
    row = {"family": family, "k": k, "in_raw": 784, "ratio": ratio, "scope": scope, "accuracy": round(100 * acc, 2), "params": m["params"],
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
    """Iterative pruning per scope: each ratio starts from the previous (pruned + fine-tuned) model."""
    rows = []
    ft = FitConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, batch_size=128, seed=1)
    exclude = ["classifier"] if args.exclude_classifier else None
    if 0.0 in args.ratios:
        rows.append(measure_row(family, k, 0.0, "-", trained, data, example, end_to_end))
        print(fmt_row(rows[-1]), flush=True)
    for scope in args.scopes:
        model, done = trained, 0.0
        for ratio in sorted(r for r in args.ratios if r > 0):
            step = 1.0 - (1.0 - ratio) / (1.0 - done)  # fraction of the still-alive weights to remove now
            model = prunekit.prune(model, example, granularity="weight", ratio=step, scope=scope, exclude=exclude)
            if args.finetune_epochs > 0:
                fit(model, data, ft)
            done = ratio
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
          f"per pruning step (lr {args.finetune_lr}); iterative L1 unstructured pruning through ratios {args.ratios} "
          f"(scopes {args.scopes}, output layer {'dense' if args.exclude_classifier else 'pruned'}); "
          f"torch threads {args.threads}", flush=True)
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
    fit(selected, raw, FitConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, batch_size=128, seed=2))
    return prune_sweep("input-prune", k, selected, raw, raw.x_test[:1], args)


COLS = ("family", "k", "ratio", "scope", "accuracy", "nonzero_params", "nonzero_macs", "e2e_nonzero_macs", "latency_ms_b1",
        "latency_ms_b64")


def header() -> str:
    return " | ".join(f"{c:>14}" for c in COLS)


def fmt_row(row) -> str:
    return " | ".join(f"{row.get(c, ''):>14}" for c in COLS)


DROPS = (0.5, 1.0, 2.0, 3.0, 5.0, 10.0)  # accuracy targets: points below the dense 784-input MLP


def cheapest(rows, family, min_acc, key):
    ok = [r for r in rows if r["family"] == family and r["accuracy"] >= min_acc]
    return min(ok, key=lambda r: r[key]) if ok else None


def goal(rows, tol):
    """At each accuracy target, the cheapest model of each family reaching it (prune-only may be ``tol`` lower).

    Comparing frontiers at fixed accuracy levels keeps collapsed models (chance accuracy) out of
    the comparison. Returns one dict per target with the matched rows and the MAC ratios.
    """
    dense = next(r for r in rows if r["family"] == "prune-only" and r["ratio"] == 0.0)["accuracy"]
    out = []
    for drop in DROPS:
        target = round(dense - drop, 2)
        p = cheapest(rows, "prune-only", target - tol, "nonzero_macs")
        r_model = cheapest(rows, "pca+prune", target, "nonzero_macs")
        r_e2e = cheapest(rows, "pca+prune", target, "e2e_nonzero_macs")
        i = cheapest(rows, "input-prune", target, "nonzero_macs")
        ratio = lambda a, b, key: (a["nonzero_macs"] / b[key]) if a and b else None  # noqa: E731
        out.append({"target": target, "prune_only": p, "pca_model": r_model, "pca_e2e": r_e2e, "input_prune": i,
                    "x_model": ratio(p, r_model, "nonzero_macs"), "x_e2e": ratio(p, r_e2e, "e2e_nonzero_macs"),
                    "x_input": ratio(p, i, "nonzero_macs")})
    return out


def describe(r, key="nonzero_macs") -> str:
    if r is None:
        return "none reaches it"
    unit = "dense MACs" if key == "macs" else "nzMACs"
    return f"{r['family']} k={r['k']} {r['scope']} r={r['ratio']}: acc {r['accuracy']}, {r[key]} {unit}"


def report_goal(rows, tol):
    print(f"\nGoal check at equal accuracy: for each target, the cheapest model of each family reaching it "
          f"(prune-only allowed {tol} point lower). Size = non-zero MACs (unstructured pruning); 'model' = the MLP on k "
          f"inputs, 'e2e' adds the dense 784 x k PCA projection.")
    fmt = lambda x: f"{x:.2f}x" if x is not None else "n/a"  # noqa: E731
    for g in goal(rows, tol):
        print(f"  acc >= {g['target']}:\n    prune-only : {describe(g['prune_only'])}"
              f"\n    pca+prune  : {describe(g['pca_model'])} -> {fmt(g['x_model'])} smaller (model)"
              f"\n    pca+prune  : {describe(g['pca_e2e'], 'e2e_nonzero_macs')} end-to-end -> {fmt(g['x_e2e'])} smaller"
              f"\n    input-prune: {describe(g['input_prune'])} -> {fmt(g['x_input'])} smaller")
        dense_pca = cheapest(rows, "pca+prune", g["target"], "macs")
        if g["prune_only"] and dense_pca:  # what dense kernels execute: unstructured masks leave 784-input shapes
            print(f"    dense MACs : {describe(dense_pca, 'macs')} vs {g['prune_only']['macs']} for any 784-input MLP -> "
                  f"{fmt(g['prune_only']['macs'] / dense_pca['macs'])} smaller (model), "
                  f"{fmt(g['prune_only']['macs'] / (dense_pca['macs'] + dense_pca['k'] * dense_pca['in_raw']))} (end-to-end)")
    met_model = [g["target"] for g in goal(rows, tol) if (g["x_model"] or 0) >= 3]
    met_e2e = [g["target"] for g in goal(rows, tol) if (g["x_e2e"] or 0) >= 3]
    print(f"goal (>= 3x fewer non-zero MACs than prune-only at equal accuracy): model alone "
          f"{'met at targets ' + str(met_model) if met_model else 'NOT met'}; end-to-end "
          f"{'met at targets ' + str(met_e2e) if met_e2e else 'NOT met'}")


def main():
    args = parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            report_goal(json.load(f)["rows"], args.tolerance)
        return
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
