"""Structured-pruning benchmark: MACs reduction vs measured CPU speed-up (batch 1 and 64), and pruning-step time.

Usage: python benchmarks/bench_structured.py [--models resnet50,vgg11_bn,mobilenetv2] [--size 64]
       [--macs-target 0.5] [--scopes local,global] [--repeats 5] [--threads 1] [--batches 1,64]
The "1st" pruning time includes one-time torch warm-up (fx, FlopCounterMode); "warm" is the steady state.
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from prunekit.measure import count_macs
from prunekit.models import MODELS, create_model
from prunekit.api import prune


# extra selections worth comparing per model: MobileNetV2's cost is dominated by depthwise convs, BN and ReLU6,
# which scale linearly with width; pruning only the expansion (hidden) channels keeps speed-up in step with MACs
EXTRA_VARIANTS = {"mobilenetv2": {"local, expand only": {"scope": "local", "include": ["features.*.block.0.0"]}}}


def parse() -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="resnet50,vgg11_bn,mobilenetv2")
    ap.add_argument("--size", type=int, default=64, help="input height = width")
    ap.add_argument("--num-classes", type=int, default=10)
    ap.add_argument("--macs-target", type=float, default=0.5, help="fraction of MACs kept (0.5 = 2x reduction)")
    ap.add_argument("--scopes", default="local,global", help="comma list of selection scopes to compare")
    ap.add_argument("--criterion", default="l2")
    ap.add_argument("--round-to", type=int, default=8, help="kept channels per layer rounded to a multiple (0: off)")
    ap.add_argument("--repeats", type=int, default=5, help="timed forward passes per model and batch (median)")
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    ap.add_argument("--batches", default="1,64")
    ap.add_argument("--prune-repeats", type=int, default=3, help="timed pruning steps (median, after the first)")
    return ap.parse_args()


def latencies(models: dict, batch: int, size: int, repeats: int, warmup: int) -> dict:
    """Median forward time (ms) per model; the models alternate so background load hits them alike."""
    x = torch.randn(batch, 3, size, size)
    times = {k: [] for k in models}
    with torch.inference_mode():
        for _ in range(warmup):
            for m in models.values():
                m(x)
        for _ in range(repeats):
            for k, m in models.items():
                t = time.perf_counter()
                m(x)
                times[k].append((time.perf_counter() - t) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def prune_times(model, x, variant: dict, args) -> tuple:
    """(first call, median of later calls) seconds for one pruning step (tracing + scoring + selection + removal)."""
    runs, pruned = [], None
    for _ in range(1 + args.prune_repeats):
        t = time.perf_counter()
        pruned = prune(model, x, macs_target=args.macs_target, criterion=args.criterion,
                                  round_to=args.round_to or None, **variant, granularity="channel")
        runs.append(time.perf_counter() - t)
    return runs[0], statistics.median(runs[1:]) if runs[1:] else runs[0], pruned


def bench_model(name: str, label: str, variant: dict, args) -> dict:
    torch.manual_seed(0)
    model = create_model(name, num_classes=args.num_classes).eval()
    x = torch.randn(1, 3, args.size, args.size)
    first, warm, pruned = prune_times(model, x, variant, args)
    pruned.eval()
    macs0, macs1 = count_macs(model, x)["macs"], count_macs(pruned, x)["macs"]
    row = {
        "model": f"{name} ({label})", "params0": sum(p.numel() for p in model.parameters()),
        "params1": sum(p.numel() for p in pruned.parameters()), "macs0": macs0, "macs1": macs1,
        "macs_x": macs0 / macs1, "prune_first_s": first, "prune_s": warm,
    }
    for b in [int(v) for v in args.batches.split(",")]:
        lat = latencies({"orig": model, "pruned": pruned}, b, args.size, args.repeats, args.warmup)
        row[f"b{b}_orig_ms"], row[f"b{b}_pruned_ms"] = lat["orig"], lat["pruned"]
        row[f"b{b}_speedup"] = lat["orig"] / lat["pruned"]
        row[f"b{b}_eff"] = row[f"b{b}_speedup"] / row["macs_x"]
    return row


def table(rows, batches) -> str:
    head = ["model", "params M", "MACs M", "MACs red.", "prune s (1st/warm)"]
    for b in batches:
        head += [f"b{b} ms orig/pruned", f"b{b} speed-up", f"b{b} speed-up/MACs red."]
    lines = [" | ".join(head), " | ".join("---" for _ in head)]
    for r in rows:
        cells = [r["model"], f"{r['params0'] / 1e6:.2f} -> {r['params1'] / 1e6:.2f}",
                 f"{r['macs0'] / 1e6:.0f} -> {r['macs1'] / 1e6:.0f}", f"{r['macs_x']:.2f}x",
                 f"{r['prune_first_s']:.2f} / {r['prune_s']:.2f}"]
        for b in batches:
            cells += [f"{r[f'b{b}_orig_ms']:.1f} / {r[f'b{b}_pruned_ms']:.1f}", f"{r[f'b{b}_speedup']:.2f}x",
                      f"{r[f'b{b}_eff']:.2f}"]
        lines.append(" | ".join(cells))
    return "\n".join(lines)


def main() -> None:
    args = parse()
    torch.set_num_threads(args.threads)
    batches = [int(v) for v in args.batches.split(",")]
    rows = []
    for name in args.models.split(","):
        if name not in MODELS:
            raise SystemExit(f"unknown model {name!r}; registered: {', '.join(MODELS.names())}")
        variants = {scope: {"scope": scope} for scope in args.scopes.split(",")}
        variants.update(EXTRA_VARIANTS.get(name, {}))
        for label, variant in variants.items():
            rows.append(bench_model(name, label, variant, args))
            print(f"done {name} ({label})", flush=True)
    print(f"\nstructured pruning to {args.macs_target:.0%} of MACs ({args.criterion}, round_to={args.round_to}), "
          f"input 3x{args.size}x{args.size}, {args.threads} thread(s), median of {args.repeats} runs\n")
    print(table(rows, batches))
    print("\ngoals: speed-up/MACs red. >= 0.9 at batch 64 for a 2x MACs reduction; warm pruning step of resnet50 < 2 s")


if __name__ == "__main__":
    main()
