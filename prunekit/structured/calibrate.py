"""Channel pruning's entry to the shared calibration loop (:mod:`prunekit.importance.calibrate`), whole-model or
block by block (:mod:`prunekit.importance.sequential`)."""
from __future__ import annotations

from typing import Any, Callable, Iterable, Optional

from torch import nn

from ..importance.calibrate import ACTIVATION_FUNCS, ACTIVATION_METHODS, ACTIVATION_MODULES, default_loss  # noqa: F401
from ..importance.calibrate import calibrate as calibrate_criterion


def calibrate(criterion, model: nn.Module, graph, calibration: Optional[Iterable], loss_fn: Optional[Callable], *,
              blocks: Optional[str] = None, max_memory: Any = None) -> None:
    """Run the calibration batches so ``criterion`` can accumulate what its ``needs`` declares (no-op for data-free
    criteria): gradients by forward + backward on ``model``, activation statistics through ``graph``.

    ``blocks`` (``"auto"`` or the dotted name of the model's list of layers): the same statistics gathered block by
    block, the cached block inputs / outputs bounded in memory by ``max_memory``
    (:func:`~prunekit.importance.sequential.calibrate_blocks`; gradient criteria are refused there). Every block is
    fed the dense model's outputs: the plan is chosen after all statistics are gathered, so nothing is pruned
    between blocks (weight pruning's ``block_inputs="pruned"`` has no channel counterpart).
    """
    if blocks is None:
        calibrate_criterion(criterion, model, calibration, loss_fn=loss_fn, graph=graph)
        return
    from ..importance.sequential import calibrate_blocks

    calibrate_blocks(criterion, model, calibration, blocks=blocks, max_memory=max_memory, graph=graph)
