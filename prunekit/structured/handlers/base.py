"""The layer-handler interface and table: one handler per layer type says how channels flow through it and how to slice it."""
from __future__ import annotations

import abc
from typing import Any, Dict, List, Optional, Tuple, Type

import numpy as np
import torch
from torch import nn

from ...registry import Registry

Slice = Tuple[str, int, Optional[np.ndarray]]  # (parameter/buffer path in the module, dim, position -> indices map)


class LayerHandler(abc.ABC):
    """How one layer type takes part in structured pruning.

    ``propagate`` maps input layouts to output layouts and records the layer's members
    (axes whose positions are channels). ``param_slices`` names, per member kind, the
    parameters and dims holding one slice per position (scoring and masking use it);
    ``prune`` keeps the given positions of each kind and returns the attributes it changed.
    """

    types: Tuple[Type[nn.Module], ...] = ()

    @abc.abstractmethod
    def propagate(self, p, node, module: nn.Module, name: str) -> Any:
        """Tell the propagator how this layer couples its input and output channels."""

    def param_slices(self, module: nn.Module, kind: str) -> List[Slice]:
        return []

    def prune(self, module: nn.Module, keep: Dict[str, np.ndarray]) -> Dict[str, Any]:
        for kind, positions in keep.items():
            for path, dim, imap in self.param_slices(module, kind):
                slice_tensor(module, path, dim, positions_to_indices(positions, imap))
        return self.update_attrs(module, keep)

    def update_attrs(self, module: nn.Module, keep: Dict[str, np.ndarray]) -> Dict[str, Any]:
        return {}


def positions_to_indices(positions: np.ndarray, imap: Optional[np.ndarray]) -> np.ndarray:
    """Indices along the parameter dim for kept positions (an index map lists several per position, block-major)."""
    positions = np.asarray(positions, dtype=np.int64)
    if imap is None:
        return positions
    return imap[positions].T.reshape(-1)


def slice_tensor(module: nn.Module, path: str, dim: int, index: np.ndarray) -> None:
    """Replace ``module.<path>`` (parameter or buffer) by its slice along ``dim``; missing/None ones are skipped."""
    owner_path, _, attr = path.rpartition(".")
    owner = module.get_submodule(owner_path) if owner_path else module
    t = getattr(owner, attr, None)
    if t is None:
        return
    idx = torch.as_tensor(index, dtype=torch.long, device=t.device)
    data = t.detach().index_select(dim, idx)
    if isinstance(t, nn.Parameter):
        setattr(owner, attr, nn.Parameter(data, requires_grad=t.requires_grad))
    else:
        owner._buffers[attr] = data


def channel_dim(ndim: int, spatial: int) -> int:
    """Channel dim of a batched (N, C, *spatial) or unbatched (C, *spatial) input."""
    return ndim - spatial - 1


LAYER_HANDLERS: Registry[LayerHandler] = Registry("layer handler")


def register_handler(name: str, *, override: bool = False):
    """Class decorator: instantiate the handler and register it under ``name``; it serves each of its ``types``.

    The type lookup reads :data:`LAYER_HANDLERS` itself, so ``LAYER_HANDLERS.unregister(name)`` and
    ``LAYER_HANDLERS.scoped(name, handler)`` add and remove a handler completely.
    """

    def deco(cls):
        LAYER_HANDLERS.add(name, cls(), override=override)
        return cls

    return deco


def handler_for(module: nn.Module) -> Optional[LayerHandler]:
    """The handler of the most specific class in the module's MRO; among handlers claiming the same class,
    the one registered last; else the last registered handler whose ``matches(module)`` says yes (a class
    recognised by its shape, such as Hugging Face's Conv1D, without importing its package); None: no handler."""
    by_type: Dict[type, LayerHandler] = {}
    for name in LAYER_HANDLERS.registration_order():
        handler = LAYER_HANDLERS.get(name)
        for t in handler.types:
            by_type[t] = handler
    for cls in type(module).__mro__:
        if cls in by_type:
            # a subclass with a forward of its own (Hugging Face's ConvNextLayerNorm permutes around
            # F.layer_norm) is not the layer the handler describes
            if (getattr(type(module), "forward", None) is not getattr(cls, "forward", None)
                    and not getattr(type(module), "prunekit_leaf", False)):  # prunekit's own layers fit their handler
                break
            return by_type[cls]
    for name in reversed(LAYER_HANDLERS.registration_order()):  # handlers that recognise a class by its shape
        handler = LAYER_HANDLERS.get(name)
        matches = getattr(handler, "matches", None)
        if matches is not None and matches(module):
            return handler
    return None
