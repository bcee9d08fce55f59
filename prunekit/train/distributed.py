"""Multi-process fine-tuning on PyTorch's DistributedDataParallel, started with ``torchrun``."""
from __future__ import annotations

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
    backend = "nccl" if torch.cuda.is_available() else "gloo"
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


def wrap(model: nn.Module) -> nn.Module:
    """DDP-wrap ``model`` when distributed (gradients all-reduced each step); else return it unchanged."""
    if not active():
        return model
    return nn.parallel.DistributedDataParallel(model, broadcast_buffers=True)
