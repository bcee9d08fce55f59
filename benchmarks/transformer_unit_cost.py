"""What one attention head and one FFN neuron of all-MiniLM-L6-v2's layer shape cost on this CPU.

A hand-built attention block (q / k / v / output Linears of 32 x heads, scaled_dot_product_attention, residual +
LayerNorm) at 3, 6, 9 and 12 heads and an FFN block (384 -> n -> 384, GELU, residual + LayerNorm) at 384 ... 1536
neurons, hidden 384, batch 16 x 128 tokens, random weights, timed in 15 shuffled interleaved rounds (fastest and
median ms). Used to ask whether choosing heads / neurons by measured time instead of multiply-adds could help the
structured student (docs/DEPLOY.md, session 15).

Usage: OMP_WAIT_POLICY=PASSIVE python benchmarks/transformer_unit_cost.py [--threads 1]
"""
import argparse
import random
import time

import torch
import torch.nn.functional as F


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=15)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(16, 128, 384)
    mask = torch.zeros(16, 1, 1, 128)

    def attn(h):
        q, k, v = (torch.nn.Linear(384, 32 * h) for _ in range(3))
        o, ln = torch.nn.Linear(32 * h, 384), torch.nn.LayerNorm(384)

        def run():
            b, t, _ = x.shape
            qq, kk, vv = (lin(x).view(b, t, h, 32).transpose(1, 2) for lin in (q, k, v))
            c = F.scaled_dot_product_attention(qq, kk, vv, attn_mask=mask).transpose(1, 2).reshape(b, t, 32 * h)
            return ln(o(c) + x)
        return run

    def ffn(n):
        a, b, ln = torch.nn.Linear(384, n), torch.nn.Linear(n, 384), torch.nn.LayerNorm(384)
        return lambda: ln(b(F.gelu(a(x))) + x)

    calls = {f"attention, {h} heads": attn(h) for h in (3, 6, 9, 12)}
    calls.update({f"FFN, {n} neurons": ffn(n) for n in (384, 768, 1152, 1536)})
    times = {k: [] for k in calls}
    rng = random.Random(0)
    with torch.inference_mode():
        for fn in calls.values():
            fn()
        for _ in range(args.rounds):
            order = list(calls)
            rng.shuffle(order)
            for k in order:
                t0 = time.perf_counter()
                calls[k]()
                times[k].append((time.perf_counter() - t0) * 1e3)
    for k, v in times.items():
        print(f"{k:22s} fastest {min(v):7.2f} ms   median {sorted(v)[len(v) // 2]:7.2f} ms")


if __name__ == "__main__":
    main()
