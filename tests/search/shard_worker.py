"""Worker for test_sharded: map_sharded, its errors and the speculative bisection on two gloo ranks (no data).

Writes ``<out>/rank<r>.json``.
"""
import json
import sys

import torch

from prunekit import collective
from prunekit.errors import PruningError
from prunekit.search import bisect_ratio, shard
from prunekit.train import distributed

torch.set_num_threads(1)
distributed.maybe_init()
out, rank = sys.argv[1], collective.rank()
report = {"world": collective.world_size()}

ran_here = []


def square(x):
    ran_here.append(x)
    assert not collective.active()  # each probe runs alone: no collective may reach the other rank
    return {"x": x, "sq": x * x, "draw": float(torch.rand(1))}


seen = []
report["squares"] = shard.map_sharded(square, [1, 2, 3, 4, 5], seeds=[10, 11, 12, 13, 14],
                                      on_result=lambda i, v: seen.append(i))
report["seen"], report["ran_here"] = seen, ran_here


ran_chunked = []
report["chunked"] = shard.map_sharded(lambda x: ran_chunked.append(x) or x + 100, list(range(7)), chunk=3)
report["ran_chunked"] = ran_chunked


def fails_at_3(x):
    if x == 3:
        raise PruningError("three is too many")
    return x


got = []
try:
    shard.map_sharded(fails_at_3, [1, 2, 3, 4, 5, 6, 7], on_result=lambda i, v: got.append(v), chunk=2)
except PruningError as exc:
    report["error"] = {"type": type(exc).__name__, "message": str(exc), "before": got}


def interrupted_at_2(x):
    if x == 2:
        raise KeyboardInterrupt
    return x


got2 = []
try:
    shard.map_sharded(interrupted_at_2, [0, 1, 2, 3], on_result=lambda i, v: got2.append(v))
except KeyboardInterrupt:
    report["interrupt"] = {"before": got2}


def accuracy(r):
    return 0.9 - 0.3 * r + (0.2 if 0.6 < r < 0.7 else 0.0)


res = bisect_ratio(accuracy, baseline=0.9, max_drop_points=5.0, hi=0.98, tol=0.004, max_probes=9)
report["bisect"] = {"ratio": res.best_ratio, "probes": [p.as_dict() for p in res.probes],
                    "speculative": [p.ratio for p in res.speculative], "calls": res.calls}
with open(f"{out}/rank{rank}.json", "w") as f:
    json.dump(report, f)
distributed.exit_rank(0)  # not interpreter finalization: it can abort a gloo rank after success
