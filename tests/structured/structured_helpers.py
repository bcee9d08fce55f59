"""Test helpers for structured pruning: the masked reference model, output comparison, ONNX round trip."""
from __future__ import annotations

import copy
import io
import warnings

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from prunekit._inputs import split_inputs

try:  # pytest puts tests/ (the conftest folder) on sys.path; `python -m pytest` also has the repo root
    from zoo import ZOO
    from zoo import convnets as zoo_convnets
except ImportError:  # pragma: no cover - run from the repository root without pytest's path setup
    from tests.zoo import ZOO
    from tests.zoo import convnets as zoo_convnets


def outputs(model, inputs) -> tuple:
    args, kwargs = split_inputs(inputs)
    with torch.no_grad():
        out = model.eval()(*args, **kwargs)
    return out if isinstance(out, tuple) else (out,)


def assert_outputs_close(a: tuple, b: tuple, atol: float = 1e-4, rtol: float = 1e-4) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b):
        assert x.shape == y.shape
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol)


def masked_reference(original: nn.Module, plan: dict) -> nn.Module:
    """A copy of the unpruned model with every removed slice of every parameter set to zero.

    The plan lists, per parameter, the kept indices along each pruned dim; the complement is
    zeroed (weights, biases, norm affine parameters; running statistics are left alone). A
    LayerNorm that lost channels normalises over its kept channels only, as the pruned one does.
    """
    ref = copy.deepcopy(original).eval()
    params = dict(ref.named_parameters())
    with torch.no_grad():
        for name, dims in plan["params"].items():
            if name not in params:
                continue  # buffers (running statistics) are not zeroed
            p = params[name]
            for dim, kept in dims.items():
                mask = torch.ones(p.shape[int(dim)], dtype=torch.bool)
                mask[torch.as_tensor(kept, dtype=torch.long)] = False
                index = [slice(None)] * p.dim()
                index[int(dim)] = mask
                p[tuple(index)] = 0.0
    for name, entry in plan["modules"].items():
        module = ref.get_submodule(name)
        if isinstance(module, nn.LayerNorm) and "chan" in entry["keep"]:
            _normalise_kept_only(module, torch.as_tensor(entry["keep"]["chan"], dtype=torch.long))
        elif _is_rms(module) and "chan" in entry["keep"]:
            _rms_kept_only(module, torch.as_tensor(entry["keep"]["chan"], dtype=torch.long))
    for name, module in ref.named_modules():  # a channels-first LayerNorm (torchvision's LayerNorm2d, HF
        kept = plan["params"].get(f"{name}.weight", {}).get("0")  # ConvNextLayerNorm) pruned through F.layer_norm
        if isinstance(module, nn.LayerNorm) and kept is not None and _channels_first(module):
            _normalise_kept_only_nchw(module, torch.as_tensor(kept, dtype=torch.long))
    return ref


def _channels_first(ln: nn.LayerNorm) -> bool:
    return type(ln).__name__ == "LayerNorm2d" or getattr(ln, "data_format", None) == "channels_first"


def _normalise_kept_only_nchw(ln: nn.LayerNorm, keep: torch.Tensor) -> None:
    def forward(x):
        y = torch.zeros_like(x)
        w = None if ln.weight is None else ln.weight[keep]
        b = None if ln.bias is None else ln.bias[keep]
        y[:, keep] = F.layer_norm(x[:, keep].permute(0, 2, 3, 1), (len(keep),), w, b, ln.eps).permute(0, 3, 1, 2)
        return y

    ln.forward = forward


def _normalise_kept_only(ln: nn.LayerNorm, keep: torch.Tensor) -> None:
    def forward(x):
        y = torch.zeros_like(x)
        w = None if ln.weight is None else ln.weight[keep]
        b = None if ln.bias is None else ln.bias[keep]
        y[..., keep] = F.layer_norm(x[..., keep], (len(keep),), w, b, ln.eps)
        return y

    ln.forward = forward


def _is_rms(module: nn.Module) -> bool:
    name = type(module).__name__
    return name.endswith("RMSNorm") or name == "T5LayerNorm"


def _rms_kept_only(norm: nn.Module, keep: torch.Tensor) -> None:
    """The RMSNorm of the masked model: root mean square over the kept channels only (written out here, not
    the library's code), the removed channels zero."""
    eps = getattr(norm, "variance_epsilon", getattr(norm, "eps", None))

    def forward(x):
        e = torch.finfo(x.dtype).eps if eps is None else eps
        y = torch.zeros_like(x)
        kept = x[..., keep].float()
        y[..., keep] = (norm.weight[keep] * kept * torch.rsqrt(kept.pow(2).mean(-1, keepdim=True) + e)).to(x.dtype)
        return y

    norm.forward = forward


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def onnx_outputs(model: nn.Module, inputs, dynamo: bool = False) -> list:
    import onnxruntime as ort

    args, _ = split_inputs(inputs)
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(model.eval(), tuple(args), buf, dynamo=dynamo)
    sess = ort.InferenceSession(buf.getvalue(), providers=["CPUExecutionProvider"])
    feeds = {i.name: a.numpy() for i, a in zip(sess.get_inputs(), args)}
    return [torch.from_numpy(np.asarray(o)) for o in sess.run(None, feeds)]
