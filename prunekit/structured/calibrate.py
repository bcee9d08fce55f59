"""Channel pruning's entry to the shared calibration loop (:mod:`prunekit.importance.calibrate`)."""
from __future__ import annotations

from typing import Callable, Iterable, Optional

from torch import nn

from ..importance.calibrate import ACTIVATION_FUNCS, ACTIVATION_METHODS, ACTIVATION_MODULES, default_loss  # noqa: F401
from ..importance.calibrate import calibrate as calibrate_criterion


def calibrate(criterion, model: nn.Module, graph, calibration: Optional[Iterable], loss_fn: Optional[Callable]) -> None:
    """Run the calibration batches so ``criterion`` can accumulate what its ``needs`` declares (no-op for data-free
    criteria): gradients by forward + backward on ``model``, activation statistics through ``graph``."""
    calibrate_criterion(criterion, model, calibration, loss_fn=loss_fn, graph=graph)
