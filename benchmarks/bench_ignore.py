"""What ignore= costs: parameters removed at one channel ratio with no ignore, ignore=[head] and freeze=[head].

Usage: python benchmarks/bench_ignore.py [--models all] [--ratio 0.5] [--size 32]
ignore keeps the head's outputs (its classes) and lets its input channels go (Torch-Pruning's meaning);
freeze keeps every channel group touching the head. The head is each model's last nn.Linear.
"""
from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from prunekit.api import prune
from prunekit.models import MODELS, create_model


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="all")
    ap.add_argument("--ratio", type=float, default=0.5)
    ap.add_argument("--size", type=int, default=32, help="input height = width for image models")
    args = ap.parse_args()
    torch.set_num_threads(1)
    names = MODELS.names() if args.models == "all" else args.models.split(",")
    rows = []
    for name in names:
        torch.manual_seed(0)
        model = create_model(name).eval()
        first = next(m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear)))
        x = torch.randn(2, first.in_channels, args.size, args.size) if isinstance(first, nn.Conv2d) \
            else torch.randn(2, first.in_features)
        try:
            model(x)
        except RuntimeError:  # a model built for one image size (LeNet-5: 28x28)
            x = torch.randn(2, first.in_channels, 28, 28)
        head = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
        total = sum(p.numel() for p in model.parameters())
        removed = {}
        for label, extra in (("none", {}), ("ignore", {"ignore": [head]}), ("freeze", {"freeze": [head]})):
            slim = prune(model, x, granularity="channel", ratio=args.ratio, **extra)
            removed[label] = 1 - sum(p.numel() for p in slim.parameters()) / total
        rows.append((name, head, removed))
        print(f"{name:14s} head={head:14s} removed: no ignore {removed['none']:6.1%}  ignore {removed['ignore']:6.1%}"
              f"  freeze {removed['freeze']:6.1%}", flush=True)
    med = {k: statistics.median(r[2][k] for r in rows) for k in ("none", "ignore", "freeze")}
    print(f"median over {len(rows)} models at ratio {args.ratio}: no ignore {med['none']:.1%}, ignore=[head] "
          f"{med['ignore']:.1%}, freeze=[head] {med['freeze']:.1%}")
    print("ignore keeps the unignored removal:", "met" if med["ignore"] >= med["none"] - 1e-9 else "not met")


if __name__ == "__main__":
    main()
