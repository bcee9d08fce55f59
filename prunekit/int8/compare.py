"""How far an int8 model is from its float32 original: max / mean |difference|, top-1 agreement, accuracy."""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Iterable, Optional

import torch
from torch import nn

from .._inputs import first_tensor, split_inputs
from ..errors import InputError
from .batches import iter_batches


@dataclass
class Comparison:
    """int8 vs float32 on the same samples; accuracies are None when the batches carry no targets."""

    samples: int
    max_abs_diff: float  # largest |int8 - float32| over every output value
    mean_abs_diff: float
    top1_agreement: float  # fraction of samples whose arg-max class is the same
    accuracy: Optional[float] = None  # int8 top-1 accuracy against the targets
    float_accuracy: Optional[float] = None  # float32 top-1 accuracy on the same samples

    def row(self) -> dict:
        return asdict(self)


def compare(qmodel: Any, model: nn.Module, batches: Iterable, *, max_batches: Optional[int] = None) -> Comparison:
    """Run ``qmodel`` (an :class:`~prunekit.int8.OrtModule` or a torch-quantized module) and the float32 ``model``
    on the same ``batches`` (a DataLoader of ``(inputs, targets)``, a list of input tensors, or one tensor).

    The float model runs in eval mode without gradients; its train flags are restored afterwards.
    """
    n_inputs = _n_inputs(qmodel)
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    samples, agree, correct, f_correct, has_targets = 0, 0, 0, 0, True
    max_diff, sum_diff, values = 0.0, 0.0, 0
    try:
        with torch.no_grad():
            for inputs, targets in iter_batches(batches, n_inputs, max_batches):
                args, kwargs = split_inputs(inputs)
                ref = first_tensor(model(*args, **kwargs)).float()
                out = first_tensor(qmodel(*args, **kwargs)).float()
                if out.shape != ref.shape:
                    raise InputError(f"the int8 model returns shape {tuple(out.shape)}, the float32 model "
                                     f"{tuple(ref.shape)}; compare the same architecture")
                d = (out - ref).abs()
                max_diff, sum_diff, values = max(max_diff, float(d.max())), sum_diff + float(d.sum()), values + d.numel()
                n = ref.shape[0] if ref.dim() > 1 else 1
                samples += n
                if ref.dim() > 1:
                    agree += int((out.argmax(-1) == ref.argmax(-1)).sum())
                if targets is None:
                    has_targets = False
                elif ref.dim() > 1:
                    t = torch.as_tensor(targets).reshape(-1)
                    correct += int((out.argmax(-1) == t).sum())
                    f_correct += int((ref.argmax(-1) == t).sum())
    finally:
        for m, flag in flags:
            m.training = flag
    if samples == 0:
        raise InputError("compare got no batches; pass a DataLoader, a list of input tensors or a tensor")
    acc = correct / samples if has_targets else None
    return Comparison(samples=samples, max_abs_diff=max_diff, mean_abs_diff=sum_diff / max(values, 1),
                      top1_agreement=agree / samples, accuracy=acc,
                      float_accuracy=f_correct / samples if has_targets else None)


def _n_inputs(qmodel: Any) -> int:
    names = getattr(qmodel, "input_names", None)
    return len(names) if names else 1
