"""Two gloo processes prune a tiny Llama block by block, each from its own shard of the calibration batches.

Run as a script (by tests/importance/test_sequential_calibration.py): ``python sequential_ranks_worker.py OUT``;
writes each rank's state dicts to ``OUT.<rank>`` (rank 1 spills every cached activation: max_memory=0).
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

HERE = Path(__file__).resolve().parent
CASES = [("wanda", "pruned"), ("wanda", "dense"), ("sparsegpt", "pruned")]


def calibration():
    return [(torch.randint(0, 96, (2, 12), generator=torch.Generator().manual_seed(10 + i)),) for i in range(4)]


def prune(crit, feed, batches, **kw):
    sys.path.insert(0, str(HERE.parent / "hf"))
    import prunekit
    from hf_zoo import ENTRIES

    entry = ENTRIES["llama"]
    return prunekit.prune(entry.build(), entry.inputs(), granularity="weight", criterion=crit, ratio=0.5,
                          calibration=batches, blocks="auto", block_inputs=feed, **kw).state_dict()


def work(rank, world, store, out):
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    torch.set_num_threads(1)
    shard = calibration()[rank::world]
    result = {f"{c}-{f}": prune(c, f, shard, max_memory=0 if rank else None) for c, f in CASES}
    torch.save(result, f"{out}.{rank}")
    from prunekit.train import distributed

    distributed.exit_rank(0)  # not interpreter finalization: it can abort a gloo rank after success


if __name__ == "__main__":
    out = sys.argv[1]
    mp.spawn(work, args=(2, out + ".store", out), nprocs=2)
    os.remove(out + ".store") if os.path.exists(out + ".store") else None
