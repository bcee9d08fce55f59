"""Multi-process fine-tuning on PyTorch's DistributedDataParallel, started with ``torchrun``."""
from __future__ import annotations

import inspect
import logging
import os

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

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


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def rank() -> int:
    return dist.get_rank() if active() else 0


def is_main() -> bool:
    """True on the process that writes files and prints (rank 0, or the only process)."""
    return rank() == 0


def train_loader(x: torch.Tensor, y: torch.Tensor, batch_size: int, seed: int):
    """A shuffled loader; under DDP each rank gets a disjoint shard (DistributedSampler)."""
    dataset = TensorDataset(x, y)
    if not active():
        gen = torch.Generator()
        gen.manual_seed(seed)
        return DataLoader(dataset, batch_size=batch_size, shuffle=True, generator=gen), None
    sampler = DistributedSampler(dataset, shuffle=True, seed=seed)
    return DataLoader(dataset, batch_size=batch_size, sampler=sampler), sampler


def barrier() -> None:
    """Wait until every process reaches this point; a no-op when not distributed."""
    agree(True)  # an all-reduce on the CPU backend: dist.barrier() would pick NCCL in a mixed group


def agree(ok: bool) -> bool:
    """True when ``ok`` is true on every process (one all-reduce); ``ok`` itself when not distributed.

    Every process must call it at the same point, so all of them take the same branch afterwards
    (e.g. all stop when training diverged on one of them, instead of the others hanging in the next
    all-reduce).
    """
    if not active():
        return bool(ok)
    flag = torch.tensor([1 if ok else 0], dtype=torch.int32, device=_device())
    dist.all_reduce(flag, op=dist.ReduceOp.MIN)
    return bool(flag.item())


def _device() -> torch.device:
    """The device collectives run on: the current CUDA device under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":  # a group created elsewhere with NCCL alone
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


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
