"""What each pruned weight multiplies: its layer's inputs as a (tokens, columns) matrix, read by forward hooks.

Criteria declaring the ``"inputs"`` need (Wanda, SparseGPT) see, per calibration batch and per selected weight,
``X`` of shape ``(tokens, columns)`` whose column ``j`` is the input that meets column ``j`` of
:func:`weight_matrix` (the weight as ``(rows, columns)``), so ``weight_matrix(W) @ X.T`` is the layer's
pre-bias output. Supported layers:

* ``nn.Linear``: every leading dimension of the input is a token;
* ``nn.Conv1d`` / ``nn.Conv2d`` with ``groups=1``: the unfolded (im2col) input, one token per output position
  and sample, columns in the flattened weight's order ``in_channels x kernel positions``;
* ``nn.MultiheadAttention``'s ``in_proj_weight`` in self-attention (query, key and value are one tensor);
* a Linear that is a MultiheadAttention's ``out_proj`` (read functionally by its parent, never called): its
  input, the attention output before projection, is recomputed by the parent's hook with an identity ``out_proj``.

Anything else is a :class:`PruningError` naming the layer, raised before any batch runs.
"""
from __future__ import annotations

import contextlib
from typing import Callable, Dict, Iterable, Iterator, List, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PruningError
from ..graph.export_capture import is_transposed_linear

Layer = Tuple[str, nn.Module, str]  # (weight key "module.param", module, parameter name)
SUPPORTED = ("nn.Linear, Hugging Face's Conv1D, nn.Conv1d / nn.Conv2d with groups=1, self-attention "
             "nn.MultiheadAttention (in_proj_weight)")


def weight_matrix(module: nn.Module, weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as ``(rows, columns)``: output rows, input columns in the order of :func:`input_matrix`."""
    return weight.reshape(weight.shape[0], -1)


def check_layer(key: str, module: nn.Module, param: str) -> None:
    """:class:`PruningError` unless the inputs of ``module.param`` can be observed (see the module docstring)."""
    if (isinstance(module, nn.Linear) or is_transposed_linear(module)) and param == "weight":
        return  # Conv1D: a Linear whose weight is stored (in, out); its callers score it as weight.T
    if isinstance(module, (nn.Conv1d, nn.Conv2d)) and param == "weight" and module.groups == 1:
        return
    if isinstance(module, nn.MultiheadAttention) and param == "in_proj_weight":
        return
    what = type(module).__name__ + (f" with groups={module.groups}" if getattr(module, "groups", 1) != 1 else "")
    raise PruningError(f"{key!r} ({what}): this criterion reads each layer's inputs, which prunekit observes for "
                       f"{SUPPORTED}; exclude the layer (exclude=[{key.rpartition('.')[0]!r}]) or narrow "
                       "include_types (e.g. include_types=['Linear'])")


def _conv_columns(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """im2col of a Conv1d / Conv2d input: ``(samples * positions, in_channels * kernel positions)``."""
    if isinstance(module, nn.Conv1d):
        x = x.unsqueeze(-2)
        kernel, dilation, stride = (1, *module.kernel_size), (1, *module.dilation), (1, *module.stride)
        pad = (*module._reversed_padding_repeated_twice, 0, 0)
    else:
        kernel, dilation, stride = module.kernel_size, module.dilation, module.stride
        pad = module._reversed_padding_repeated_twice
    if x.dim() == 3:  # an unbatched input
        x = x.unsqueeze(0)
    mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
    if any(pad):
        x = F.pad(x, pad, mode=mode)
    cols = F.unfold(x, kernel, dilation=dilation, padding=0, stride=stride)  # (B, C*K, L)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


def input_matrix(module: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The ``(tokens, columns)`` input matrix of a Linear / Conv1d / Conv2d called on ``x`` (float, detached)."""
    x = x.detach()
    if isinstance(module, (nn.Conv1d, nn.Conv2d)):
        return _conv_columns(module, x).float()
    return x.reshape(-1, x.shape[-1]).float()


def _mha_args(args, kwargs) -> tuple:
    names = ("query", "key", "value")
    vals = list(args[:3]) + [kwargs.get(n) for n in names[len(args[:3]):]]
    return tuple(vals)


@contextlib.contextmanager
def _swapped(module: nn.Module, values: Dict[str, torch.Tensor]) -> Iterator[None]:
    """``module``'s tensors ``values`` replaced for the block (parameters or plain attributes, e.g. masked weights)."""
    old = {}
    for name, value in values.items():
        if name in module._parameters:
            old[name] = ("param", module._parameters[name])
            module._parameters[name] = value
        else:
            old[name] = ("attr", module.__dict__[name])  # a masked weight: a plain attribute recomputed by hooks
            module.__dict__[name] = value
    try:
        yield
    finally:
        for name, (kind, value) in old.items():
            if kind == "param":
                module._parameters[name] = value
            else:
                module.__dict__[name] = value


def _attention_output(mha: nn.MultiheadAttention, args, kwargs) -> torch.Tensor:
    """The input of ``mha.out_proj``: ``mha`` recomputed with an identity output projection (no hooks run)."""
    proj = mha.out_proj
    weight = getattr(proj, "weight")
    eye = torch.eye(weight.shape[1], dtype=weight.dtype, device=weight.device)
    bias = None if proj.bias is None else torch.zeros_like(proj.bias)
    kwargs = {**kwargs, "need_weights": False}
    if len(args) > 4:  # need_weights given positionally: pass it by name instead
        args = args[:4]
    with _swapped(proj, {"weight": eye, **({"bias": bias} if bias is not None else {})}):
        return mha.forward(*args, **kwargs)[0]


@contextlib.contextmanager
def observe_inputs(model: nn.Module, layers: Sequence[Layer], sink: Callable[[str, torch.Tensor], None]):
    """Forward hooks that call ``sink(key, X)`` with the ``(tokens, columns)`` inputs of every layer, for the block.

    The MultiheadAttention / TransformerEncoderLayer fused fast paths (which skip the submodules' forwards) are
    switched off for the block. Yields a dict ``key -> number of observed calls``.
    """
    for key, module, param in layers:
        check_layer(key, module, param)
    seen = {key: 0 for key, _, _ in layers}
    handles = []

    def emit(key, x):
        seen[key] += 1
        sink(key, x)

    parents = {id(m.out_proj): m for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    for key, module, param in layers:
        if isinstance(module, nn.MultiheadAttention):
            handles.append(module.register_forward_pre_hook(_in_proj_hook(key, emit), with_kwargs=True))
        elif id(module) in parents:
            handles.append(parents[id(module)].register_forward_hook(_out_proj_hook(key, emit), with_kwargs=True))
        else:
            handles.append(module.register_forward_pre_hook(_plain_hook(key, module, emit)))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        yield seen
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)
        for h in handles:
            h.remove()


def _plain_hook(key, module, emit):
    def hook(mod, args):
        with torch.no_grad():
            emit(key, input_matrix(module, args[0]))

    return hook


def _in_proj_hook(key, emit):
    def hook(mod, args, kwargs):
        q, k, v = _mha_args(args, kwargs)
        if not (q is k and k is v):
            raise PruningError(f"{key!r}: in_proj_weight of cross-attention reads three different inputs; this "
                               f"criterion handles self-attention only: exclude {key!r}")
        with torch.no_grad():
            emit(key, q.detach().reshape(-1, q.shape[-1]).float())

    return hook


def _out_proj_hook(key, emit):
    def hook(mha, args, kwargs, output):
        with torch.no_grad():
            attn = _attention_output(mha, args, kwargs)
            emit(key, attn.detach().reshape(-1, attn.shape[-1]).float())

    return hook


def weight_layers(model: nn.Module) -> List[Layer]:
    """Every ``(key, module, "weight")`` of the model's Linear / Conv1d / Conv2d (groups=1) layers: the default
    of the calibration loop's ``layers``."""
    return [(f"{n}.weight", m, "weight") for n, m in model.named_modules()
            if n and isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) and getattr(m, "groups", 1) == 1]


def check_seen(seen: Dict[str, int], keys: Iterable[str]) -> None:
    """:class:`PruningError` naming the layers no calibration batch reached."""
    missing = [k for k in keys if not seen.get(k)]
    if missing:
        raise PruningError(f"no calibration input reached {', '.join(map(repr, missing[:5]))}"
                           f"{' ...' if len(missing) > 5 else ''} (not called as a module in forward?); exclude "
                           "those layers from pruning or check the calibration batches")
