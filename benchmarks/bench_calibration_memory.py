"""Peak resident memory (and time) of calibrating a 24-block Llama whole vs block by block (blocks=, max_memory=).

Every variant runs in a fresh subprocess (``--variant NAME``), so one variant's peak never hides another's; the
parent prints the table. Per variant: the RSS after building the model and its calibration batches (``base``),
the peak RSS of the whole process (``ru_maxrss``, the high-water mark), their difference (what calibration added)
and the wall time. The model has random weights, built from a config (nothing downloaded).

Variants:
  wanda-whole        prunekit.importance.calibrate: a whole-model forward per batch (prunekit's default)
  wanda-blocks       prunekit.importance.sequential.calibrate_blocks, cached block inputs in memory
  wanda-blocks-disk  the same with max_memory=0: every cached block input / output spilled to a temporary folder
  sparsegpt-whole    prunekit.prune(criterion='sparsegpt'): one whole-model forward per pruned layer
  sparsegpt-blocks   the same with blocks='auto' (pruned block inputs: the same masks and weights)

Run: ``make bench-calibration-memory`` (or ``python benchmarks/bench_calibration_memory.py``); about 2-4 minutes
on two cores. ``--quick`` shrinks the model for a smoke run.
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

VARIANTS = ("wanda-whole", "wanda-blocks", "wanda-blocks-disk", "sparsegpt-whole", "sparsegpt-blocks")
# Wanda: long sequences, so the activations of a whole-model forward (the key/value cache of every layer, the
# logits) weigh as much as the weights; SparseGPT (one whole-model forward per layer: 168 of them) a smaller one
SHAPES = {
    "wanda": dict(layers=24, hidden=256, intermediate=688, vocab=8192, batch=4, seq=1024, batches=4),
    "sparsegpt": dict(layers=24, hidden=128, intermediate=344, vocab=4096, batch=2, seq=256, batches=2),
}
QUICK = dict(layers=4, hidden=64, intermediate=128, vocab=512, batch=2, seq=64, batches=2)


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2 ** 20


def peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def run_variant(name: str, quick: bool) -> dict:
    import torch
    import transformers

    import prunekit
    from prunekit.importance import calibrate, create_criterion
    from prunekit.importance.sequential import calibrate_blocks

    torch.set_num_threads(1)
    family = name.split("-")[0]
    s = QUICK if quick else SHAPES[family]
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=s["vocab"], hidden_size=s["hidden"],
                                      intermediate_size=s["intermediate"], num_hidden_layers=s["layers"],
                                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=s["seq"],
                                      attn_implementation="sdpa")
    model = transformers.LlamaForCausalLM(config).eval()
    g = torch.Generator().manual_seed(1)
    batches = [(torch.randint(0, s["vocab"], (s["batch"], s["seq"]), generator=g),) for _ in range(s["batches"])]
    params = sum(p.numel() for p in model.parameters())
    base = rss_mb()
    start = time.perf_counter()
    if family == "wanda":
        crit = create_criterion("wanda")
        if name == "wanda-whole":
            calibrate(crit, model, batches)
        else:
            calibrate_blocks(crit, model, batches, max_memory=0 if name.endswith("disk") else None)
        check = float(sum(v.sum() for v in crit._sq.values()))
    else:
        extra = {"blocks": "auto"} if name.endswith("blocks") else {}
        pruned = prunekit.prune(model, batches[0][0], granularity="weight", criterion="sparsegpt", ratio=0.5,
                                calibration=batches, inplace=True, **extra)
        check = float(sum(float(m.sum()) for m in prunekit.unstructured.get_masks(pruned).values()))
    seconds = time.perf_counter() - start
    tokens = s["batch"] * s["seq"] * s["batches"]
    return {"variant": name, "params_m": params / 1e6, "tokens": tokens, "layers": s["layers"], "base_mb": base,
            "peak_mb": peak_mb(), "seconds": seconds, "check": check}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--variant", choices=VARIANTS)
    ap.add_argument("--quick", action="store_true", help="a 4-block model: a smoke run of a few seconds")
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args.variant, args.quick)))
        return
    rows = []
    for name in VARIANTS:
        cmd = [sys.executable, __file__, "--variant", name] + (["--quick"] if args.quick else [])
        out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
        rows.append(json.loads(out.strip().splitlines()[-1]))
    by = {r["variant"]: r for r in rows}
    print(f"{'variant':<18} {'blocks':>6} {'params':>8} {'tokens':>7} {'base MB':>8} {'peak MB':>8} "
          f"{'added MB':>9} {'time s':>7}")
    for r in rows:
        print(f"{r['variant']:<18} {r['layers']:>6} {r['params_m']:>7.1f}M {r['tokens']:>7} {r['base_mb']:>8.0f} "
              f"{r['peak_mb']:>8.0f} {r['peak_mb'] - r['base_mb']:>9.0f} {r['seconds']:>7.1f}")
    for family in ("wanda", "sparsegpt"):
        whole, blocks = by[f"{family}-whole"], by[f"{family}-blocks"]
        same = abs(whole["check"] - blocks["check"]) <= 1e-6 * max(1.0, abs(whole["check"]))
        added = (whole["peak_mb"] - whole["base_mb"]) / max(1e-9, blocks["peak_mb"] - blocks["base_mb"])
        print(f"{family}: peak whole / blocks = {whole['peak_mb'] / blocks['peak_mb']:.2f}x, memory added by "
              f"calibration {added:.1f}x, time {whole['seconds'] / blocks['seconds']:.1f}x; same statistics / "
              f"masks: {same}")
    disk = by["wanda-blocks-disk"]
    print(f"wanda, max_memory=0 (every cached activation on disk): peak {disk['peak_mb']:.0f} MB, "
          f"{disk['seconds']:.1f} s; same statistics: "
          f"{abs(disk['check'] - by['wanda-whole']['check']) <= 1e-6 * abs(by['wanda-whole']['check'])}")


if __name__ == "__main__":
    main()
