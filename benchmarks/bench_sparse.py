"""Sparse-kernel benchmark: prunekit.sparsify's per-layer decisions for a 784-2048-2048-10 MLP.

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/bench_sparse.py [--threads 1] [--sparsities 0.8,0.9,0.95]
       [--batches 1,16] [--repeats 15] [--markdown]

Each Linear is magnitude-pruned to the sparsity (scope local, masks finalized by sparsify), then sparsify times
dense vs csr / bsr / scipy / native kernels on the layer's real input (interleaved, shuffled rounds, median). The whole
model is then timed dense vs sparsified the same way. Weights are random: latency does not depend on them.
"""
from __future__ import annotations

import argparse
import warnings

import torch

import prunekit
from prunekit.sparse import interleaved_median, sparsify


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--sparsities", default="0.8,0.9,0.95")
    ap.add_argument("--batches", default="1,16")
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--markdown", action="store_true", help="one markdown table of every decision")
    args = ap.parse_args()
    warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
    torch.set_num_threads(args.threads)
    kernels = ("csr", "scipy", "native")
    md = ["| sparsity | batch | layer | dense ms | " + " | ".join(f"{k} ms" for k in kernels) + " | choice | speedup |",
          "|---:|---:|---|---:|" + "---:|" * len(kernels) + "---|---:|"]
    whole = []
    for s in (float(v) for v in args.sparsities.split(",")):
        torch.manual_seed(0)
        model = prunekit.models.create_model("mlp", in_features=784, hidden=(2048, 2048), num_classes=10).eval()
        x = torch.randn(16, 784)
        pruned = prunekit.prune(model, x, ratio=s, scope="local")
        for b in (int(v) for v in args.batches.split(",")):
            sparse, table = sparsify(pruned, x, batch_size=b, repeats=args.repeats)
            if not args.markdown:
                print(f"\n== sparsity {s:.0%}, batch {b} ==")
                print(table)
            for r in table:
                ms = r["sparse_ms"]
                cell = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
                md.append(f"| {s:.0%} | {b} | {r['name']} {r['shape'][0]}x{r['shape'][1]} | {cell(r['dense_ms'])} | "
                          + "".join(f"{cell(ms.get(k))} | " for k in kernels) + f"{r['choice']} | "
                          + (f"{r['speedup']:.2f}x |" if r["speedup"] else "- |"))
            dense = prunekit.finalize(prunekit.clone_model(pruned))
            xb = torch.randn(b, 784)
            ms = interleaved_median("model", {"dense": lambda: dense(xb), "sparse": lambda: sparse(xb)},
                                    repeats=args.repeats)
            whole.append((s, b, ms["dense"], ms["sparse"]))
    if args.markdown:
        print("\n".join(md))
        print("\n| sparsity | batch | whole model dense ms | sparsified ms | speedup |\n|---:|---:|---:|---:|---:|")
    else:
        print("\nwhole model (ms per forward):")
    for s, b, d, sp in whole:
        print(f"| {s:.0%} | {b} | {d:.3f} | {sp:.3f} | {d / sp:.2f}x |" if args.markdown else
              f"  sparsity {s:.0%} batch {b}: dense {d:.3f}  sparsified {sp:.3f}  ({d / sp:.2f}x)")


if __name__ == "__main__":
    main()
