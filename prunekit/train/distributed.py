"""Multi-process fine-tuning on PyTorch's DistributedDataParallel, started with ``torchrun``."""
from __future__ import annotations

import inspect
import logging
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

from ..collective import active, agree, all_reduce_sums, barrier, is_main, rank, world_size  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)


def maybe_init() -> bool:
    """Join the process group when launched by torchrun (WORLD_SIZE > 1); True when distributed."""
    if not dist.is_available():
        return False
    if dist.is_initialized():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False
    # gloo for CPU tensors (the models prunekit trains stay where the caller put them, the CPU by default),
    # NCCL for CUDA tensors: a plain "nccl" group would fail on the first all-reduce of a CPU model
    backend = "cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo"
    if torch.cuda.is_available() and "LOCAL_RANK" in os.environ:
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]) % torch.cuda.device_count())
    dist.init_process_group(backend=backend)
    log.info("joined process group: rank %d of %d (%s)", dist.get_rank(), dist.get_world_size(), backend)
    return True


def train_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
    """A shuffled loader of ``batch_size`` samples a step and its sampler (``sampler.set_epoch(e)`` before epoch e).

    One permutation of the whole split per epoch, drawn from ``seed + epoch`` (DistributedSampler's rule), in one
    process and under torchrun alike; with N processes rank r takes positions r, r + N, r + 2N, ... of it. So the
    k-th batches of the N ranks together are exactly the k-th batch of ``N * batch_size`` samples a single process
    draws with the same seed: N ranks x ``batch_size`` b train like one process x ``N * b`` (DDP averages the
    ranks' mean-loss gradients). Exactly so when the split's size is a multiple of N; otherwise DistributedSampler
    repeats the permutation's first samples to even the shards out.
    """
    dataset = TensorDataset(x, y)
    sampler = DistributedSampler(dataset, num_replicas=world_size(), rank=rank(), shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler), sampler


def _buffer_sync_kwargs() -> dict:
    """Sync buffers (BatchNorm statistics) from rank 0 at init and before each forward.

    torch >= 2.13 spells this ``forward_sync_buffers`` and deprecates ``broadcast_buffers`` (a
    FutureWarning per process and per wrap); older releases only know ``broadcast_buffers``.
    """
    params = inspect.signature(nn.parallel.DistributedDataParallel.__init__).parameters
    return {"forward_sync_buffers": True} if "forward_sync_buffers" in params else {"broadcast_buffers": True}


def wrap(model: nn.Module) -> nn.Module:
    """DDP-wrap ``model`` when distributed (gradients all-reduced each step); else return it unchanged."""
    if not active():
        return model
    return nn.parallel.DistributedDataParallel(model, **_buffer_sync_kwargs())



def shutdown() -> None:
    """Leave the process group cleanly: wait for every rank, then destroy it (a no-op when not distributed).

    The group's worker threads can outlive this (DDP keeps references to the group); a process that
    then goes through interpreter finalization may abort when one of them asks for the GIL, so the
    CLI ends a torchrun rank with ``os._exit`` right after this call.
    """
    if not (dist.is_available() and dist.is_initialized()):
        return
    try:
        barrier()
    finally:
        dist.destroy_process_group()
        log.info("left the process group")


def exit_rank(code: int = 0) -> None:
    """End this torchrun rank: leave the process group (:func:`shutdown`), flush, and exit without finalization.

    Call it as the last line of a script every rank runs. After ``destroy_process_group`` the group's worker
    threads can still be alive; interpreter finalization then destroys them while joinable and the C++ runtime
    aborts the process ("terminate called without an active exception", SIGABRT) after the work has succeeded,
    which torchrun reports as a failed job. ``os._exit`` skips finalization, so flush what must reach the terminal
    or a file before. Outside torchrun it is ``sys.exit(code)``.
    """
    import sys

    if not (dist.is_available() and dist.is_initialized()):
        sys.exit(code)
    shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
    logging.shutdown()
    os._exit(code)
