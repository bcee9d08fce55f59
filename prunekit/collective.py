"""Collectives across the processes of a torchrun job, usable from every layer; each is a no-op in one process.

Joining the group (``maybe_init``), DDP and the sharded training loader live in :mod:`prunekit.train.distributed`;
this module only talks to a group someone already joined, so lower layers (the importance criteria, which reduce
their calibration statistics here) need not import the training package. Every process must call a collective at
the same point of the program, in the same order, or the group hangs.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Dict, Hashable, List, Mapping, Tuple

import torch
import torch.distributed as dist

from .errors import PruningError

BUCKET_ELEMENTS = 1 << 24  # tensors are summed in flat buckets of at most this many elements (one all-reduce each)


def active() -> bool:
    """True inside a process group of more than one process (and outside :func:`alone`)."""
    return not _ALONE and dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


_ALONE: list = []  # one entry per open alone() block


@contextmanager
def alone():
    """Inside the block this process acts as if it were the only one: :func:`active` is False, so no DDP wrap, no
    all-reduce, rank 0. A sharded sweep (:mod:`prunekit.search.shard`) evaluates each rank's own probes in it:
    the ranks then work on different models and must not meet in a collective."""
    _ALONE.append(True)
    try:
        yield
    finally:
        _ALONE.pop()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """True on the process that writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def device() -> torch.device:
    """The device plain collectives run on: the current CUDA device under NCCL alone, else the CPU (gloo)."""
    if dist.get_backend() == "nccl":  # a group created elsewhere with NCCL alone
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def agree(ok: bool) -> bool:
    """True when ``ok`` is true on every process (one all-reduce); ``ok`` itself when not distributed.

    Every process must call it at the same point, so all of them take the same branch afterwards
    (e.g. all stop when training diverged on one of them, instead of the others hanging in the next
    all-reduce).
    """
    if not active():
        return bool(ok)
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def barrier() -> None:
    """Wait until every process reaches this point; a no-op when not distributed."""
    agree(True)  # an all-reduce on the CPU backend: dist.barrier() would pick NCCL in a mixed group


def all_reduce_sums(stats: Mapping[Hashable, torch.Tensor]) -> Dict[Hashable, torch.Tensor]:
    """The element-wise sum over every process of each tensor of ``stats``; a plain copy of the dict in one process.

    Sums and counts, never per-process means: a statistic reduced this way equals the one a single process
    computes over the union of the processes' batches (up to the order of floating-point additions), and it is
    the same bits on every process. Keys may differ between processes (a layer that no batch of one shard
    reached): the result holds the union, a key missing on a process counting as zeros there. A key must have
    the same shape and dtype wherever it exists, else :class:`PruningError`. Results are new tensors on each
    tensor's own device (a key missing here: on the device of the first process that holds it). Tensors travel
    in flat buckets per dtype (:data:`BUCKET_ELEMENTS`), one all-reduce per bucket, after one all-gather of the
    keys, shapes and dtypes.
    """
    if not active():
        return dict(stats)
    local = {k: (tuple(v.shape), v.dtype, v.device.type) for k, v in stats.items()}
    gathered: List[dict] = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, local)
    union: Dict[Hashable, tuple] = {}
    for r, metas in enumerate(gathered):  # the same list on every process, so the same key order everywhere
        for k, meta in metas.items():
            first = union.setdefault(k, meta)
            if first[:2] != meta[:2]:
                raise PruningError(f"statistic {k!r} has shape {tuple(first[0])} ({first[1]}) on one process but "
                                   f"{tuple(meta[0])} ({meta[1]}) on process {r}: every process must calibrate the "
                                   "same model (same architecture, same pruned state)")
    out: Dict[Hashable, torch.Tensor] = {}
    for keys, dtype, dev in _buckets(union):
        flat = torch.cat([_local_part(stats.get(k), union[k], dev) for k in keys])
        dist.all_reduce(flat, op=dist.ReduceOp.SUM)
        start = 0
        for k in keys:
            shape = union[k][0]
            n = _numel(shape)
            part = flat[start:start + n].reshape(shape)
            start += n
            here = stats.get(k)
            out[k] = part.to(here.device) if here is not None else part.clone()
    return out


def _numel(shape: Tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


def _collective_device(device_type: str) -> torch.device:
    """Where a tensor kept on ``device_type`` is reduced: its own device in a mixed gloo / NCCL group."""
    backend = dist.get_backend()
    if backend == "gloo":
        return torch.device("cpu")
    if backend == "nccl" or device_type == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _buckets(union: Mapping[Hashable, tuple]):
    """(keys, dtype, device) groups of at most :data:`BUCKET_ELEMENTS` elements (a bigger tensor goes alone)."""
    open_: Dict[tuple, list] = {}  # (dtype, device) -> [keys, elements]
    for k, (shape, dtype, device_type) in union.items():
        where = (dtype, _collective_device(device_type))
        n = _numel(shape)
        bucket = open_.setdefault(where, [[], 0])
        if bucket[0] and bucket[1] + n > BUCKET_ELEMENTS:
            yield bucket[0], where[0], where[1]
            bucket[0], bucket[1] = [], 0
        bucket[0].append(k)
        bucket[1] += n
    for (dtype, dev), (keys, _) in open_.items():
        if keys:
            yield keys, dtype, dev


def _local_part(t, meta: tuple, dev: torch.device) -> torch.Tensor:
    shape, dtype, _ = meta
    if t is None:
        return torch.zeros(_numel(shape), dtype=dtype, device=dev)
    return t.detach().reshape(-1).to(dev, dtype)
