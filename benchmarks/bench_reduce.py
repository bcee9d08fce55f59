"""Benchmark: PCA-k then prune vs prune-only vs input-feature pruning, an MLP on Fashion-MNIST (784 inputs).

Two sweeps over the same trained models (the 784-input MLP, PCA-k MLPs, input-feature-pruned MLPs):

* unstructured: iterative L1 weight pruning (global and local) through increasing ratios, a short
  fine-tune after each step. Masks leave dense shapes, so the size compared is **non-zero MACs**.
* structured: one-shot L1 channel pruning (hidden neurons physically removed, same fraction per
  layer) at each ratio, then the same fine-tune budget. Dense MACs are the **executed MACs**.

Every row is measured: test accuracy, params, MACs and latency (batch 1 and 64). For PCA models "e2e"
measures the shipped one-module model on raw inputs: the 784 x k projection merged into the first Linear or kept
in front of it (``fold_into(how=...)``), whichever executes fewer MACs (column e2e_fold says which).

    python benchmarks/bench_reduce.py --json runs/bench_reduce/final.json   # the reported run
    python benchmarks/bench_reduce.py --quick                               # a smoke run, ~15 s

Needs ``apt-get install dataset-fashion-mnist`` (files in /usr/share/datasets/fashion-mnist/).

Last full run (defaults, 2-core shared CPU, 1 thread, 329 s; 20k train / 5k val / 10k test, 8 epochs dense
training, 3 fine-tune epochs per unstructured step, 5 per channel ratio): dense 784-256-128-10 MLP 87.18 %.
Unstructured (non-zero MACs, prune-only allowed 0.5 point lower): PCA+prune is 0.5x-1.2x the prune-only size
for the MLP alone and 0.1x end-to-end: 3x NOT met. Structured (executed MACs; PCA model within 0.5 point
below each prune-only frontier level): the PCA-k MLP alone is 4.0x-13.7x smaller at every level (87.39 %:
6.7x, 85.0 %: 4.0x, 80.48 %: 10.4x), so the goal HOLDS for the MLP alone; folded onto raw inputs it is
0.5x-1.56x: NOT met (a merged fold is a 784-input first layer as wide as the PCA model's first hidden layer,
i.e. prune-only's own shape; a prepended 784 x k projection alone is about as large as prune-only's first
layer). Input-feature + channel pruning: 2.7x at 80.48 %, 5.2x at 65 %, nothing within 0.5 point of the
levels >= 85 %.
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
from prunekit.reduce import Reducer, fold_into, reduce_splits
from prunekit.structured import InputSelectedLinear
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
    p.add_argument("--ratios", type=float, nargs="+",
                   default=[0.0, 0.5, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995, 0.998],
                   help="prune ratios (a dense grid, so prune-only's accuracy/MACs frontier is well sampled)")
    p.add_argument("--scopes", nargs="+", default=["global", "local"], help="pruning scopes tried for every family")
    p.add_argument("--kinds", nargs="+", default=["unstructured", "structured"], choices=["unstructured", "structured"],
                   help="which pruning sweeps to run (both by default)")
    p.add_argument("--channel-ratios", type=float, nargs="+", default=[0.0, 0.25, 0.5, 0.75, 0.875, 0.9375, 0.97],
                   help="structured sweep: fraction of hidden neurons removed per layer (one-shot from trained)")
    p.add_argument("--channel-finetune-epochs", type=int, default=5,
                   help="fine-tuning epochs after each one-shot channel pruning (the same budget at every ratio)")
    p.add_argument("--channel-scope", default="local",
                   help="structured scope: local = same fraction in each hidden layer")
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
        args.channel_ratios, args.channel_finetune_epochs = [0.0, 0.5, 0.875], 1
    return args


def measure_row(family, k, ratio, scope, model, data, example, end_to_end=None):
    acc = evaluate(model, data.x_test, data.y_test, num_classes=data.num_classes)["accuracy"]
    dense = prunekit.finalize(clone_model(model)).eval()  # masks folded in: same outputs, plain modules for timing
    m = measure(dense, example, latency=True, batch_sizes=(64,), repeats=30, warmup=5)
    row = {"family": family, "k": k, "in_raw": 784, "ratio": ratio, "scope": scope, "accuracy": round(100 * acc, 2),
           "params": m["params"],
           "nonzero_params": m["nonzero_params"], "macs": m["macs"], "nonzero_macs": m["nonzero_macs"],
           "latency_ms_b1": round(m["latency_ms"], 4), "latency_ms_b64": round(m["latency_ms_b64"], 4),
           "hidden": hidden_widths(dense)}
    row.update(e2e_nonzero_macs=row["nonzero_macs"], e2e_macs=row["macs"], e2e_latency_ms_b1=row["latency_ms_b1"],
               e2e_latency_ms_b64=row["latency_ms_b64"], e2e_fold="-")
    if end_to_end is not None:  # (reducer, raw example): the PCA projection runs in front of every reduced model
        reducer, raw_example = end_to_end
        # the shipped one-module model: the projection merged into the first layer or kept in front of it,
        # whichever executes fewer MACs (non-zero MACs for the unstructured rows, whose masks merging would densify)
        forms = {how: prunekit.finalize(fold_into(dense, reducer, how=how)).eval() for how in ("merge", "prepend")}
        sized = {how: measure(f, raw_example, latency=False) for how, f in forms.items()}
        key = "macs" if str(scope).startswith("ch") else "nonzero_macs"
        how = min(sized, key=lambda h: sized[h][key])
        e = measure(forms[how], raw_example, latency=True, batch_sizes=(64,), repeats=30, warmup=5)
        row.update(e2e_nonzero_macs=e["nonzero_macs"], e2e_macs=e["macs"], e2e_latency_ms_b1=round(e["latency_ms"], 4),
                   e2e_latency_ms_b64=round(e["latency_ms_b64"], 4), e2e_fold=how)
    return row


def hidden_widths(model) -> str:
    """'in-h1-h2-out' of the model's Linear layers (input count as the first Linear reads it)."""
    lins = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    return "-".join(str(n) for n in [lins[0].in_features] + [m.out_features for m in lins]) if lins else ""


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


def channel_sweep(family, k, trained, data, example, args, end_to_end=None):
    """Structured: one-shot channel pruning of the trained model at each ratio, then the same fine-tune budget.

    Hidden neurons are physically removed, so dense MACs are the executed MACs. ``InputSelectedLinear``
    (from input-feature pruning) is a leaf module: traced into, its outputs would not be prunable.
    """
    rows = []
    ft = FitConfig(epochs=args.channel_finetune_epochs, lr=args.finetune_lr, batch_size=128, seed=1)
    for ratio in sorted(args.channel_ratios):
        model = trained
        if ratio > 0:
            model = prunekit.prune(trained, example, granularity="channel", ratio=ratio, scope=args.channel_scope,
                                   leaf_modules=[InputSelectedLinear])
            if args.channel_finetune_epochs > 0:
                fit(model, data, ft)
        rows.append(measure_row(family, k, ratio, f"ch-{args.channel_scope}", model, data, example, end_to_end))
        print(fmt_row(rows[-1], STRUCT_COLS), flush=True)
    return rows


def train_mlp(data, in_features, args):
    torch.manual_seed(0)
    model = create_model("mlp", in_features=in_features, hidden=list(args.hidden), num_classes=data.num_classes)
    fit(model, data, FitConfig(epochs=args.epochs, lr=1e-3, batch_size=128, seed=0))
    return model


def build_families(raw, args):
    """The trained starting points: (unstructured family, structured family, k, model, data, example, end_to_end)."""
    d = raw.x_train.shape[1]
    base = train_mlp(raw, d, args)
    fams = [("prune-only", "prune-only/ch", d, base, raw, raw.x_test[:1], None)]
    for k in args.dims:
        reducer = Reducer("pca", k, whiten=args.whiten)
        data = reduce_splits(raw, reducer)
        model = train_mlp(data, k, args)
        fams.append(("pca+prune", "pca+ch", k, model, data, data.x_test[:1], (reducer, raw.x_test[:1])))
    for k in args.dims:
        selected = select_inputs(base, raw, k, args)
        if selected is not None:
            fams.append(("input-prune", "input+ch", k, selected, raw, raw.x_test[:1], None))
    return fams


def run(args):
    raw = load_data(name="fashion_mnist", layout="flat", train_subset=args.train_subset, test_subset=args.test_subset,
                    val_subset=5000 if not args.quick else 1000)
    print(f"Fashion-MNIST: train {len(raw.x_train)}, val {len(raw.x_val)}, test {len(raw.x_test)}, "
          f"{raw.x_train.shape[1]} features; MLP hidden {args.hidden}; {args.epochs} epochs dense training "
          "(Adam lr 1e-3, "
          f"batch 128); PCA fitted on the training split; input-feature pruning = L1 input selection + "
          f"{args.finetune_epochs} fine-tune epochs; torch threads {args.threads}\n"
          f"unstructured: iterative L1 weight pruning through ratios {args.ratios}, {args.finetune_epochs} fine-tune "
          f"epochs per step (lr {args.finetune_lr}, scopes {args.scopes}, output layer "
          f"{'dense' if args.exclude_classifier else 'pruned'})\n"
          f"structured: one-shot L1 channel pruning ({args.channel_scope}) of the trained model at ratios "
          f"{args.channel_ratios}, {args.channel_finetune_epochs} fine-tune epochs each (lr {args.finetune_lr}); "
          f"ratio 0 = the trained model, not fine-tuned", flush=True)
    fams = build_families(raw, args)
    rows = []
    if "unstructured" in args.kinds:
        print("\nUnstructured (masks; size = non-zero MACs)\n" + header(), flush=True)
        for fam, _, k, model, data, example, e2e in fams:
            rows += prune_sweep(fam, k, model, data, example, args, e2e)
    if "structured" in args.kinds:
        print("\nStructured (neurons removed; MACs = executed MACs; e2e_macs: the folded model on raw 784 inputs)\n"
              + header(STRUCT_COLS), flush=True)
        for _, fam, k, model, data, example, e2e in fams:
            rows += channel_sweep(fam, k, model, data, example, args, e2e)
    return rows


def select_inputs(base, raw, k, args):
    """Learned feature selection: prune the first Linear's inputs to k and fine-tune; None if unsupported."""
    d = raw.x_train.shape[1]
    try:
        selected = prunekit.prune(base, raw.x_test[:1], granularity="input", ratio=1 - k / d)
    except Exception as exc:  # the structured engine may not support it in this checkout: say so, keep going
        print(f"input-feature pruning to {k}: unavailable ({type(exc).__name__}: {exc})", flush=True)
        return None
    fit(selected, raw, FitConfig(epochs=args.finetune_epochs, lr=args.finetune_lr, batch_size=128, seed=2))
    return selected


COLS = ("family", "k", "ratio", "scope", "accuracy", "nonzero_params", "nonzero_macs", "e2e_nonzero_macs",
        "latency_ms_b1",
        "latency_ms_b64")


STRUCT_COLS = ("family", "k", "ratio", "hidden", "accuracy", "params", "macs", "e2e_macs", "e2e_fold", "latency_ms_b1",
               "latency_ms_b64", "e2e_latency_ms_b1")


def header(cols=COLS) -> str:
    return " | ".join(f"{c:>14}" for c in cols)


def fmt_row(row, cols=COLS) -> str:
    return " | ".join(f"{row.get(c, ''):>14}" for c in cols)


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
    if not any(r["family"] == "prune-only" for r in rows):
        return  # structured-only run
    print(f"\nGoal check at equal accuracy: for each target, the cheapest model of each family reaching it "
          f"(prune-only allowed {tol} point lower). Size = non-zero MACs (unstructured pruning); "
          "'model' = the MLP on k "
          f"inputs, 'e2e' is the folded model on raw 784 inputs.")
    fmt = lambda x: f"{x:.2f}x" if x is not None else "n/a"  # noqa: E731
    for g in goal(rows, tol):
        print(f"  acc >= {g['target']}:\n    prune-only : {describe(g['prune_only'])}"
              f"\n    pca+prune  : {describe(g['pca_model'])} -> {fmt(g['x_model'])} smaller (model)"
              f"\n    pca+prune  : {describe(g['pca_e2e'], 'e2e_nonzero_macs')} end-to-end -> {fmt(g['x_e2e'])} smaller"
              f"\n    input-prune: {describe(g['input_prune'])} -> {fmt(g['x_input'])} smaller")
        dense_pca = cheapest(rows, "pca+prune", g["target"], "macs")
        if g["prune_only"] and dense_pca:  # what dense kernels execute: unstructured masks leave 784-input shapes
            e2e_dense = dense_pca["macs"] + dense_pca["k"] * dense_pca["in_raw"]
            print(f"    dense MACs : {describe(dense_pca, 'macs')} vs {g['prune_only']['macs']} "
                  "for any 784-input MLP -> "
                  f"{fmt(g['prune_only']['macs'] / dense_pca['macs'])} smaller (model), "
                  f"{fmt(g['prune_only']['macs'] / e2e_dense)} (end-to-end)")
    met_model = [g["target"] for g in goal(rows, tol) if (g["x_model"] or 0) >= 3]
    met_e2e = [g["target"] for g in goal(rows, tol) if (g["x_e2e"] or 0) >= 3]
    print(f"goal (>= 3x fewer non-zero MACs than prune-only at equal accuracy): model alone "
          f"{'met at targets ' + str(met_model) if met_model else 'NOT met'}; end-to-end "
          f"{'met at targets ' + str(met_e2e) if met_e2e else 'NOT met'}")


def pareto(rows):
    """Rows not dominated by another row at least as accurate with fewer MACs, most accurate first."""
    keep = [r for r in rows if not any(o["accuracy"] >= r["accuracy"] and o["macs"] < r["macs"] for o in rows)]
    return sorted(keep, key=lambda r: (-r["accuracy"], r["macs"]))


REDUCED = (("pca_model", "pca+ch", "macs"), ("pca_e2e", "pca+ch", "e2e_macs"), ("input", "input+ch", "macs"))


def structured_goal(rows, tol):
    """For each accuracy level of structured prune-only's frontier, the cheapest reduced model within ``tol`` below it.

    Levels are prune-only/ch's Pareto models (a dominated prune-only point would inflate the ratio).
    ``x_<name>`` = prune-only MACs / the reduced model's MACs under that accounting: ``pca_model`` the MLP
    on k inputs alone, ``pca_e2e`` folded onto raw inputs, ``input`` input-feature + channel pruning.
    """
    out = []
    for p in pareto([r for r in rows if r["family"] == "prune-only/ch"]):
        g = {"level": p["accuracy"], "prune_only": p}
        for name, family, key in REDUCED:
            best = cheapest(rows, family, round(p["accuracy"] - tol, 2), key)
            g[name], g["x_" + name] = best, (p["macs"] / best[key] if best else None)
        out.append(g)
    return out


def describe_s(r, key) -> str:
    if r is None:
        return "none within tolerance"
    return f"k={r['k']} r={r['ratio']} {r['hidden']}: acc {r['accuracy']}, {r[key]} MACs"


def report_structured(rows, tol):
    goals = structured_goal(rows, tol)
    if not goals:
        return
    print("\nStructured table (executed MACs; e2e_macs: the folded model on raw 784 inputs)\n" + header(STRUCT_COLS))
    for r in rows:
        if r["scope"].startswith("ch-"):
            print(fmt_row(r, STRUCT_COLS))
    fmt = lambda x: f"{x:.2f}x" if x is not None else "n/a"  # noqa: E731
    print(f"\nStructured goal check: for each accuracy level of prune-only/ch's frontier, "
          "the smallest reduce-then-prune "
          f"model with accuracy >= level - {tol}; ratio = prune-only MACs / its MACs.")
    for g in goals:
        p = g["prune_only"]
        print(f"  prune-only/ch r={p['ratio']} {p['hidden']}: acc {p['accuracy']}, {p['macs']} MACs"
              f"\n    pca+ch, MLP alone      : {describe_s(g['pca_model'], 'macs')} -> {fmt(g['x_pca_model'])}"
              f"\n    pca+ch, folded         : {describe_s(g['pca_e2e'], 'e2e_macs')} -> {fmt(g['x_pca_e2e'])}"
              f"\n    input+ch               : {describe_s(g['input'], 'macs')} -> {fmt(g['x_input'])}")
    labels = {"pca_model": "PCA + channel, MLP alone", "pca_e2e": "PCA + channel, folded onto raw inputs",
              "input": "input-feature + channel"}
    for name, label in labels.items():
        met = [g["level"] for g in goals if (g["x_" + name] or 0) >= 3]
        print(f"goal (>= 3x fewer executed MACs than structured prune-only within {tol} point), {label}: "
              f"{'met at levels ' + str(met) if met else 'NOT met'} of {[g['level'] for g in goals]}")


def main():
    args = parse_args()
    if args.from_json:
        with open(args.from_json) as f:
            rows = json.load(f)["rows"]
        report_goal(rows, args.tolerance)
        report_structured(rows, args.tolerance)
        return
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    rows = run(args)
    report_goal(rows, args.tolerance)
    report_structured(rows, args.tolerance)
    print(f"\nwall time {time.perf_counter() - t0:.0f} s")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "rows": rows}, f, indent=1)


if __name__ == "__main__":
    main()
