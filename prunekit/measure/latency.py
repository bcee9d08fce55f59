"""Forward-pass wall time: median (and IQR) of repeated timed runs after warm-up, in inference mode."""
from __future__ import annotations

import contextlib
import time
from typing import Iterator, Optional

import numpy as np
import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from .._inputs import Inputs, run_model
from ..errors import ConfigError


@contextlib.contextmanager
def eval_state(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode; afterwards restore every module's train flag and re-derive masked weights.

    Masked weights are recomputed because a forward under ``torch.inference_mode`` leaves
    inference tensors in ``module.weight`` that autograd would later refuse.
    """
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for m, flag in flags:
            m.training = flag
        _refresh_masked_weights(model)


def _refresh_masked_weights(model: nn.Module) -> None:
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                name = hook._tensor_name
                if hasattr(module, name + "_orig") and hasattr(module, name + "_mask"):
                    setattr(module, name, hook.apply_mask(module))


@contextlib.contextmanager
def num_threads(n: Optional[int]) -> Iterator[None]:
    """Run with ``torch.set_num_threads(n)`` (no change when ``n`` is None), restoring the old count."""
    if n is None:
        yield
        return
    if n < 1:
        raise ConfigError(f"threads must be a positive integer, got {n}")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def time_forward(model: nn.Module, inputs: Inputs, *, repeats: int = 30, warmup: int = 5) -> dict:
    """``{"median_ms", "iqr_ms"}`` of ``repeats`` timed forwards after ``warmup`` untimed ones.

    The caller sets eval mode and threads (see :func:`eval_state`, :func:`num_threads`).
    """
    if repeats < 1 or warmup < 0:
        raise ConfigError(f"latency needs repeats >= 1 and warmup >= 0, got repeats={repeats}, warmup={warmup}")
    cuda = any(p.is_cuda for p in model.parameters())
    times = []
    with torch.inference_mode():
        for i in range(warmup + repeats):
            if cuda:
                torch.cuda.synchronize()
            start = time.perf_counter()
            run_model(model, inputs)
            if cuda:
                torch.cuda.synchronize()
            if i >= warmup:
                times.append((time.perf_counter() - start) * 1000.0)
    q1, med, q3 = np.percentile(times, [25, 50, 75])
    return {"median_ms": float(med), "iqr_ms": float(q3 - q1)}
