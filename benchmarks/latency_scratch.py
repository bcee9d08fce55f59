"""Capacity check for bench_latency: the latency-targeted architecture retrained from scratch with the dense recipe.

It separates what ``latency_target=0.5`` costs in capacity (the narrower architecture, fully trained) from what the
one-epoch fine-tune fails to recover. The architecture is ``prunekit.prune(dense, batch 64, granularity="channel",
criterion="l2", latency_target=0.5, latency_threads=1, latency_checks=0)`` on the cached dense baseline; every
layer is then re-initialised and trained with the baseline's epochs and SGD recipe.

Usage: python benchmarks/latency_scratch.py resnet20|vgg_small   (baselines from bench_latency.py --train-only)
"""
from __future__ import annotations

import sys

import torch

import prunekit
import bench_latency as bl
from prunekit.train import FitConfig, fit


def main() -> None:
    name = sys.argv[1] if len(sys.argv) > 1 else "resnet20"
    sys.argv = [sys.argv[0], "--models", name]
    args = bl.parse()
    torch.set_num_threads(1)
    data = bl.small_data(name, args)
    dense = bl.trained(name, data, args).eval()
    ex = (data.x_train[:args.batch].clone(),)
    pruned = prunekit.prune(dense, ex, granularity="channel", criterion="l2", latency_target=args.target,
                            latency_threads=1, latency_checks=0)
    print(name, "widths", {k: g["kept"] for k, g in bl.latency_report(pruned)["groups"].items()}, flush=True)
    torch.manual_seed(args.seed)
    for m in pruned.modules():
        if m is not pruned and hasattr(m, "reset_parameters"):
            m.reset_parameters()
    setup = bl.SETUPS[name]
    fit(pruned, data, FitConfig(epochs=setup["epochs"][0], seed=args.seed, **bl.SGD), stage=f"{name} from scratch")
    pruned.eval()
    print(f"{name}: from scratch {bl.accuracy(pruned, data.x_test, data.y_test):.2f}, "
          f"dense {bl.accuracy(dense, data.x_test, data.y_test):.2f}", flush=True)


if __name__ == "__main__":
    main()
