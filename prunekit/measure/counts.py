"""Parameter counts that understand torch.nn.utils.prune masks: effective weights, non-zeros, weighted leaf layers."""
from __future__ import annotations

from typing import Dict, Iterator, List, Tuple

import torch
from torch import nn

ORIG, MASK = "_orig", "_mask"  # torch.nn.utils.prune's suffixes: weight_orig (parameter) + weight_mask (buffer)


def effective_param(module: nn.Module, name: str) -> torch.Tensor:
    """What ``module`` computes with for parameter ``name``: ``orig * mask`` when masked, else the tensor itself."""
    orig, mask = getattr(module, name + ORIG, None), getattr(module, name + MASK, None)
    if isinstance(orig, torch.Tensor) and isinstance(mask, torch.Tensor):
        return masked_value(orig, mask)
    return getattr(module, name).detach()


def masked_value(orig: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``orig * mask`` (detached) with pruned entries +0.0: a plain product leaves -0.0 where ``orig < 0``,
    which the bit-exact sparse format would have to record separately."""
    return torch.where(mask != 0, orig.detach() * mask, torch.zeros((), dtype=orig.dtype, device=orig.device))


def own_params(module: nn.Module) -> Iterator[Tuple[str, torch.Tensor, torch.Tensor]]:
    """``(name, stored_parameter, effective_tensor)`` for the module's direct parameters (``weight_orig`` -> ``weight``)."""
    for pname, p in module.named_parameters(recurse=False):
        base = pname[: -len(ORIG)] if pname.endswith(ORIG) else pname
        if base != pname and isinstance(getattr(module, base + MASK, None), torch.Tensor):
            yield base, p, effective_param(module, base)
        else:
            yield pname, p, p.detach()


def dense_equivalent(model: nn.Module) -> nn.Module:
    """``model`` itself, or a copy where every module defining ``prunekit_dense_equivalent()`` (a layer running a
    sparse kernel, whose weights are buffers) is replaced by the dense module computing the same function, so
    parameters, non-zeros and MACs are counted as for any other layer."""
    if not any(callable(getattr(m, "prunekit_dense_equivalent", None)) for m in model.modules()):
        return model
    import copy

    out = copy.deepcopy(model)
    for name, module in list(out.named_modules()):
        if name and callable(getattr(module, "prunekit_dense_equivalent", None)):
            parent, _, child = name.rpartition(".")
            setattr(out.get_submodule(parent) if parent else out, child, module.prunekit_dense_equivalent())
    return out


def count_params(model: nn.Module) -> int:
    """All parameters, each shared tensor once (a masked weight counts its ``weight_orig`` once, masks are buffers)."""
    return sum(p.numel() for p in model.parameters())


def count_nonzero_params(model: nn.Module) -> int:
    """Non-zero entries of the effective parameters (masked entries count as zero)."""
    seen, total = set(), 0
    for module in model.modules():
        for _, p, eff in own_params(module):
            if id(p) in seen:
                continue
            seen.add(id(p))
            total += int(torch.count_nonzero(eff))
    return total


def effective_state_dict(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``model.state_dict()`` with every ``X_orig`` + ``X_mask`` pair replaced by ``X = X_orig * X_mask`` (CPU, detached)."""
    sd = model.state_dict()
    out: Dict[str, torch.Tensor] = {}
    for key, value in sd.items():
        if key.endswith(MASK) and key[: -len(MASK)] + ORIG in sd:
            continue
        if key.endswith(ORIG) and key[: -len(ORIG)] + MASK in sd:
            base = key[: -len(ORIG)]
            out[base] = masked_value(value, sd[base + MASK]).cpu()
        else:
            out[key] = value.detach().cpu()
    return out


def dedup_tensors(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Contiguous copies, keeping only the first name of tensors that share storage (tied weights)."""
    seen, out = set(), {}
    for key, t in state_dict.items():
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if t.numel() and ident in seen:
            continue
        seen.add(ident)
        out[key] = t.contiguous().clone()
    return out


def is_weight_name(name: str) -> bool:
    """``weight``, ``weight_ih_l0``, ``in_proj_weight``...: parameters that multiply inputs (biases do not)."""
    return name == "weight" or name.startswith("weight_") or name.endswith("_weight")


def weight_tensors(module: nn.Module) -> List[Tuple[str, torch.Tensor]]:
    """``(name, effective tensor)`` of the module's own weight parameters (masks applied)."""
    return [(n, eff) for n, _, eff in own_params(module) if is_weight_name(n)]


def weighted_leaves(model: nn.Module) -> Iterator[Tuple[str, nn.Module]]:
    """Leaf modules with weight parameters (Linear, Conv, Embedding, LSTM, norms...), masked or not."""
    for name, module in model.named_modules():
        if next(module.children(), None) is None and weight_tensors(module):
            yield name, module


def weight_density(module: nn.Module) -> float:
    """Fraction of non-zero entries over all of the module's effective weights."""
    ws = [w for _, w in weight_tensors(module)]
    return sum(int(torch.count_nonzero(w)) for w in ws) / max(sum(w.numel() for w in ws), 1)


def layer_counts(module: nn.Module) -> dict:
    """Parameter / non-zero counts of one layer and the sparsity of its weights.

    ``shape`` is the shape of ``weight`` (or of the first weight, e.g. LSTM's ``weight_ih_l0``).
    """
    params = nonzero = 0
    for _, p, eff in own_params(module):
        params += p.numel()
        nonzero += int(torch.count_nonzero(eff))
    ws = dict(weight_tensors(module))
    main = ws.get("weight", next(iter(ws.values())))
    return {
        "shape": list(main.shape),
        "params": params,
        "nonzero": nonzero,
        "sparsity": 1.0 - weight_density(module),
    }
