"""Get a model ready to export: a finalized deep copy (pruning masks folded into the weights), eval mode, flat I/O names."""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Iterator, List

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune
from torch.utils._pytree import tree_leaves

from .._inputs import Inputs, split_inputs, with_batch_size
from .errors import ExportError


def finalized_copy(model: nn.Module) -> nn.Module:
    """A deep copy in eval mode whose masked parameters are plain parameters holding ``orig * mask``.

    The user's model is left untouched (masks, hooks, train/eval flags).
    """
    try:
        with _leaf_masked_weights(model):
            clone = copy.deepcopy(model)
    except Exception as exc:  # e.g. modules holding non-copyable handles
        raise ExportError(f"cannot deep-copy {type(model).__name__} to export it ({exc}); make the model deep-copyable") from exc
    for module in clone.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                name = hook._tensor_name
                torch_prune.remove(module, name)
                with torch.no_grad():  # orig * mask leaves -0.0 where orig < 0: store plain zeros
                    param = getattr(module, name)
                    param.masked_fill_(param == 0, 0.0)
    from ..unstructured.masks import remove_refresh_hooks

    remove_refresh_hooks(clone)  # the masks are plain parameters now; TorchScript cannot compile the hooks
    return clone.eval()


@contextlib.contextmanager
def _leaf_masked_weights(model: nn.Module) -> Iterator[None]:
    """Temporarily detach ``module.weight = orig * mask`` (a non-leaf tensor deepcopy refuses), then put it back."""
    saved = []
    for module in model.modules():
        for hook in list(module._forward_pre_hooks.values()):
            if isinstance(hook, torch_prune.BasePruningMethod):
                name = hook._tensor_name
                value = getattr(module, name, None)
                if isinstance(value, torch.Tensor) and not value.is_leaf:
                    saved.append((module, name, value))
                    setattr(module, name, value.detach())
    try:
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def export_inputs(example_inputs: Inputs) -> Inputs:
    """Example inputs with a batch of at least 2, so tracers do not specialise the batch dimension to 1."""
    args, kwargs = split_inputs(example_inputs)
    batch = [t.shape[0] for t in list(args) + list(kwargs.values()) if isinstance(t, torch.Tensor) and t.dim() > 0]
    if batch and min(batch) < 2:
        return with_batch_size(example_inputs, 2)
    return example_inputs


def input_names(example_inputs: Inputs) -> List[str]:
    """``input_0, input_1, ...`` for positional inputs, the keyword names for dict inputs."""
    args, kwargs = split_inputs(example_inputs)
    return [f"input_{i}" for i in range(len(args))] + list(kwargs)


def output_names(outputs: Any) -> List[str]:
    return [f"output_{i}" for i in range(len(tree_leaves(outputs)))]


def batch_axes(example_inputs: Inputs, outputs: Any) -> dict:
    """``{name: {0: "batch"}}`` for every input, and every output whose leading size equals the input batch."""
    args, kwargs = split_inputs(example_inputs)
    tensors = list(args) + list(kwargs.values())
    batch = next((t.shape[0] for t in tensors if isinstance(t, torch.Tensor) and t.dim() > 0), None)
    axes = {n: {0: "batch"} for n, t in zip(input_names(example_inputs), tensors) if isinstance(t, torch.Tensor) and t.dim() > 0}
    for name, out in zip(output_names(outputs), tree_leaves(outputs)):
        if isinstance(out, torch.Tensor) and out.dim() > 0 and out.shape[0] == batch:
            axes[name] = {0: "batch"}
    return axes


def flat_outputs(outputs: Any) -> List[torch.Tensor]:
    return [t for t in tree_leaves(outputs) if isinstance(t, torch.Tensor)]


def max_abs_diff(a: List[torch.Tensor], b: List[Any]) -> float:
    """Largest absolute difference between two lists of outputs (tensors / arrays) of the same shapes.

    Matching infinities and NaNs on both sides count as equal; a NaN on one side only is an infinite difference.
    """
    if len(a) != len(b):
        raise ExportError(f"the exported model returns {len(b)} outputs, the eager model {len(a)}")
    diff = 0.0
    for i, (x, y) in enumerate(zip(a, b)):
        y = torch.as_tensor(y)
        if tuple(x.shape) != tuple(y.shape):
            raise ExportError(f"output {i}: exported shape {tuple(y.shape)} differs from eager shape {tuple(x.shape)}")
        if x.numel():
            a, b = x.detach().cpu().double(), y.detach().cpu().double()
            d = (a - b).abs()
            d = torch.where((a == b) | (torch.isnan(a) & torch.isnan(b)), torch.zeros_like(d), d)  # equal infs, both NaN
            d = torch.nan_to_num(d, nan=float("inf"))  # NaN on one side only
            diff = max(diff, float(d.max()))
    return diff

