"""Batches as users pass them (a DataLoader of (inputs, targets), a list of input tensors) split into inputs and targets."""
from __future__ import annotations

from itertools import islice
from typing import Any, Iterable, Iterator, Optional, Tuple

import torch

from ..errors import ConfigError


def split_batch(batch: Any, n_inputs: int = 1) -> Tuple[Any, Optional[torch.Tensor]]:
    """``(inputs, targets or None)`` of one batch.

    A tensor or a dict is inputs. A pair is ``(inputs, targets)`` unless the model takes two positional inputs and
    both items are tensors (then it is the inputs); any other tuple / list is the model's positional inputs.
    """
    if isinstance(batch, (torch.Tensor, dict)):
        return batch, None
    if isinstance(batch, (tuple, list)):
        if len(batch) == 2 and (n_inputs != 2 or not isinstance(batch[0], torch.Tensor)):
            return batch[0], batch[1]
        return tuple(batch), None
    raise ConfigError(f"a batch must be a Tensor, an (inputs, targets) pair or a dict of Tensors, got "
                      f"{type(batch).__name__}")


def iter_batches(batches: Iterable, n_inputs: int = 1, limit: Optional[int] = None) -> Iterator[Tuple[Any, Any]]:
    """``(inputs, targets)`` of at most ``limit`` batches; a single Tensor is one batch."""
    if isinstance(batches, (torch.Tensor, dict)):
        batches = [batches]
    try:
        it = iter(batches)
    except TypeError as exc:
        raise ConfigError(f"batches must be an iterable of batches (a DataLoader, a list of tensors), got "
                          f"{type(batches).__name__}") from exc
    for batch in islice(it, limit):
        yield split_batch(batch, n_inputs)
