"""The second, different input an exported file is verified on: same shapes and dtypes, other values and batch size.

Tracing exporters (``torch.jit.trace``, the legacy ONNX exporter) record only what the example input
did: a Python ``if x.sum() > 0:`` is frozen to the branch the example took, and a size computed in
Python (``float(x.size(0))``) is frozen to the example's batch size. Both reproduce the example input
exactly, so a check on that input alone proves nothing. The second input built here has the same
shapes and dtypes, a different batch size where the file's batch axis is dynamic, and different values
(floats negated, rescaled and noised so the sign of their sum flips; integer ids redrawn within the
example's range; bool masks kept).
"""
from __future__ import annotations

from typing import List, Optional

import torch

from .._inputs import Inputs, map_tensors, split_inputs, with_batch_size

SEED = 0  # the second input is the same on every call


def different_inputs(example_inputs: Inputs, batch: Optional[int] = None, *, seed: int = SEED) -> Inputs:
    """Inputs shaped like ``example_inputs`` (batch ``batch`` when given) with different values.

    Float tensors: ``-1.5 * x`` plus seeded zero-mean noise, shifted so the mean is exactly
    ``-1.5 * mean(x)`` (every element and the sum change sign: a Python branch on either flips).
    Integer tensors (token ids): seeded random values in ``[min, max]`` of the example. Bool masks: kept.
    """
    gen = torch.Generator().manual_seed(seed)
    resized = with_batch_size(example_inputs, batch) if batch is not None else map_tensors(example_inputs, torch.clone)
    originals = iter(_tensors(example_inputs))

    def change(t: torch.Tensor) -> torch.Tensor:
        original = next(originals)
        t = t.detach()
        if t.dtype == torch.bool or t.numel() == 0:
            return t.clone()
        if t.is_floating_point():
            ref = original.detach().float()
            spread = float(ref.std()) if ref.numel() > 1 else float(ref.abs().max())
            spread = spread if spread > 0 and spread == spread else 1.0
            noise = torch.randn(t.shape, generator=gen).to(t.device)
            if noise.numel() > 1:
                noise = noise - noise.mean()
            out = -1.5 * t.float() + 0.1 * spread * noise
            out = out + (-1.5 * ref.mean() - out.mean())  # the sum's sign is the opposite of the example's
            return out.to(t.dtype)
        if t.is_complex():
            return (-1.5 * t).clone()
        lo, hi = int(original.min()), int(original.max())
        return torch.randint(lo, hi + 1, tuple(t.shape), generator=gen, dtype=torch.int64).to(t.device, t.dtype)

    return map_tensors(resized, change)


def other_batch(example_inputs: Inputs) -> Optional[int]:
    """The second input's batch size: example batch + 1 (3 for a batch of 1, so it differs from a traced 2 too)."""
    sizes = [t.shape[0] for t in _tensors(example_inputs) if t.dim() > 0]
    if not sizes:
        return None
    b = sizes[0]
    return b + 1 if b >= 2 else 3


def _tensors(inputs: Inputs) -> List[torch.Tensor]:
    args, kwargs = split_inputs(inputs)
    out: List[torch.Tensor] = []
    map_tensors(list(args) + list(kwargs.values()), lambda t: out.append(t) or t)
    return out


def _batch(inputs: Inputs) -> Optional[int]:
    return next((t.shape[0] for t in _tensors(inputs) if t.dim() > 0), None)
