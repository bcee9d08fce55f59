"""Folding BatchNorm running statistics into the affine parameters, for a smaller Deep-Compression file.

In eval mode a BatchNorm computes ``(x - mean) / sqrt(var + eps) * weight + bias``. With
``scale = weight / sqrt(var + eps)`` the same map is ``x * scale + (bias - mean * scale)``, so
:func:`fold_batchnorm_statistics` sets ``weight = scale``, ``bias = bias - mean * scale``,
``running_mean = 0`` and ``running_var = 1 - eps`` (the normalisation becomes the identity, up to
float rounding). The two statistics then cost almost nothing in the file (constant streams), and
eval outputs stay the same to float precision. Training such a model again re-estimates the
statistics from batches, so fold last, after every fine-tune, right before saving.
"""
from __future__ import annotations

from typing import List

import torch
from torch import nn


def fold_batchnorm_statistics(model: nn.Module) -> List[str]:
    """Fold the running statistics of every affine BatchNorm with running stats into its weight and bias, in place.

    Returns the names of the folded modules. Eval-mode outputs are unchanged up to float rounding.
    """
    done = []
    for name, m in model.named_modules():
        if not isinstance(m, nn.modules.batchnorm._BatchNorm) or not m.affine or not m.track_running_stats:
            continue
        if m.running_mean is None or m.running_var is None:
            continue
        with torch.no_grad():
            scale = m.weight / torch.sqrt(m.running_var + m.eps)
            m.bias.copy_(m.bias - m.running_mean * scale)
            m.weight.copy_(scale)
            m.running_mean.zero_()
            m.running_var.fill_(1.0 - m.eps)
        done.append(name)
    return done
