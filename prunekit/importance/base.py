"""The importance-criterion interface: a criterion scores weights (unstructured) and/or channel groups (structured)."""
from __future__ import annotations

from typing import Iterable, Optional

import torch
from torch import nn

from ..errors import PruningError
from ..registry import Registry


class Criterion:
    """Base class of importance criteria. Higher score = more important = kept.

    Unstructured pruning calls :meth:`weight_scores` once per selected parameter.
    Criteria that need data (``needs_data = True``) get calibration batches first:
    the engine runs forward + backward on each batch and calls :meth:`observe` after
    every backward, so a criterion can accumulate gradient or activation statistics.
    Structured pruning calls :meth:`group_scores` (see ``prunekit.structured``).
    """

    name: str = "criterion"
    needs_data: bool = False  # True: calibration batches must be supplied

    def reset(self) -> None:
        """Forget statistics accumulated by :meth:`observe`."""

    def observe(self, params: Iterable[tuple[str, nn.Parameter]]) -> None:
        """Called after each calibration backward pass with the selected (name, parameter) pairs."""

    def weight_scores(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """Per-element scores, same shape as ``weight``."""
        raise PruningError(f"criterion {self.name!r} does not support unstructured (weight) pruning")

    def group_scores(self, group, **ctx) -> torch.Tensor:  # pragma: no cover - overridden by structured criteria
        """Per-channel scores of a dependency group (one value per prunable index)."""
        raise PruningError(f"criterion {self.name!r} does not support structured (channel) pruning")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


CRITERIA: Registry[type] = Registry("criterion")


def register_criterion(name: str, **kw):
    def deco(cls):
        cls.name = name
        return CRITERIA.register(name, **kw)(cls)

    return deco


def create_criterion(spec, **kwargs) -> Criterion:
    """A :class:`Criterion` from a registered name, a Criterion instance, or a callable ``(name, weight) -> scores``."""
    if isinstance(spec, Criterion):
        return spec
    if isinstance(spec, str):
        return CRITERIA.create(spec, **kwargs)
    if callable(spec):
        return FunctionCriterion(spec)
    raise PruningError(f"criterion must be a registered name ({', '.join(CRITERIA.names())}), a Criterion or a callable")


class FunctionCriterion(Criterion):
    """Wraps a plain callable ``fn(name, weight) -> scores`` as a weight criterion."""

    name = "function"

    def __init__(self, fn):
        self.fn = fn

    def weight_scores(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        scores = torch.as_tensor(self.fn(name, weight))
        if scores.shape != weight.shape:
            raise PruningError(
                f"custom criterion returned scores of shape {tuple(scores.shape)} for {name!r}, "
                f"expected the weight's shape {tuple(weight.shape)}"
            )
        return scores


def optional_seed(seed: Optional[int]) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g
