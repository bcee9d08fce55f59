"""The torch backend: dynamic int8 of Linear (and LSTM / GRU) layers with ``torch.ao.quantization.quantize_dynamic``.

torch marks ``torch.ao.quantization`` deprecated (in favour of torchao, not installed here): its two
deprecation warnings are silenced by message, for the call only, so every other warning still shows.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Iterator

import torch
from torch import nn

from .._inputs import Inputs, run_model
from ..errors import ConfigError
from .options import Int8Options

# the exact deprecation notices torch.ao.quantization emits (on import of its modules and on quantized tensors)
DEPRECATION_MESSAGES = (r"(?s).*torch\.ao\.quantization is deprecated",
                        r"(?s).*quantized tensor creation functions.*deprecated")


@contextlib.contextmanager
def quiet_ao_deprecations() -> Iterator[None]:
    with warnings.catch_warnings():
        for message in DEPRECATION_MESSAGES:
            warnings.filterwarnings("ignore", message=message)
        yield


def _no_fastpath(module, args):
    """A forward pre-hook that does nothing: its presence keeps TransformerEncoderLayer off its fused fast path."""
    return None


def off_fastpath(model: nn.Module) -> None:
    """The fused TransformerEncoderLayer path reads ``linear1.weight`` as a tensor; a quantized Linear's ``weight``
    is a method, so the fast-path check itself fails. torch skips the fast path for layers with forward hooks."""
    for module in model.modules():
        if isinstance(module, nn.TransformerEncoderLayer) and not isinstance(module.linear1, nn.Linear):
            module.register_forward_pre_hook(_no_fastpath)


def quantize_torch(model: nn.Module, example_inputs: Inputs, opts: Int8Options) -> nn.Module:
    """A finalized copy of ``model`` whose chosen layer types hold int8 weights (activations quantized per call)."""
    from ..export.prepare import finalized_copy

    names = opts.layer_types or ["Linear"]
    types = {getattr(nn, n) for n in names}
    clone = finalized_copy(model)  # masks folded into plain weights: the quantized layers copy them
    if not any(isinstance(m, tuple(types)) for m in clone.modules()):
        raise ConfigError(f"{type(model).__name__} has no {' / '.join(names)} layer for torch's dynamic int8 to "
                          "quantize; use backend='onnxruntime' (it quantizes convolutions too)")
    with quiet_ao_deprecations():
        from torch.ao.quantization import quantize_dynamic

        quantized = quantize_dynamic(clone, types, dtype=torch.qint8)
        off_fastpath(quantized)
        with torch.no_grad():
            run_model(quantized.eval(), example_inputs)  # a wrong example input is an InputError now
    return quantized.eval()
