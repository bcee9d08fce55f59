"""Weight masks in torch.nn.utils.prune's convention (``weight_orig`` + ``weight_mask`` + forward pre-hook)."""
from __future__ import annotations

from typing import Dict, Iterator, Tuple

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ..errors import PruningError


def is_masked(module: nn.Module, name: str = "weight") -> bool:
    return hasattr(module, f"{name}_mask") and hasattr(module, f"{name}_orig")


def effective(module: nn.Module, name: str = "weight") -> torch.Tensor:
    """The weight the module computes with: ``orig * mask`` when masked, else the parameter."""
    if is_masked(module, name):
        return getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask")
    return getattr(module, name)


def trainable(module: nn.Module, name: str = "weight") -> nn.Parameter:
    """The parameter the optimizer updates (``weight_orig`` when masked)."""
    return getattr(module, f"{name}_orig") if is_masked(module, name) else getattr(module, name)


def current_mask(module: nn.Module, name: str = "weight") -> torch.Tensor:
    if is_masked(module, name):
        return getattr(module, f"{name}_mask")
    return torch.ones_like(getattr(module, name))


def set_mask(module: nn.Module, name: str, mask: torch.Tensor) -> None:
    """Install ``mask`` (1 = keep) on ``module.name``; an existing mask is replaced in place."""
    param = trainable(module, name)
    if mask.shape != param.shape:
        raise PruningError(f"mask of shape {tuple(mask.shape)} does not fit {name!r} of shape {tuple(param.shape)}")
    mask = mask.to(device=param.device, dtype=param.dtype)
    if is_masked(module, name):
        getattr(module, f"{name}_mask").copy_(mask)
        setattr(module, name, getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask"))
    else:
        torch_prune.custom_from_mask(module, name, mask)


def masked_modules(model: nn.Module) -> Iterator[Tuple[str, nn.Module, str]]:
    """Yield ``(module_name, module, param_name)`` for every masked parameter."""
    for mod_name, module in model.named_modules():
        for hook in module._forward_pre_hooks.values():
            hooks = hook._pruning_methods if isinstance(hook, torch_prune.PruningContainer) else [hook]
            for h in hooks:
                if isinstance(h, torch_prune.BasePruningMethod) and is_masked(module, h._tensor_name):
                    yield mod_name, module, h._tensor_name
                    break


def get_masks(model: nn.Module) -> Dict[str, torch.Tensor]:
    """``{"module.param": mask}`` for every masked parameter (copies)."""
    out = {}
    for mod_name, module, pname in masked_modules(model):
        key = f"{mod_name}.{pname}" if mod_name else pname
        out[key] = getattr(module, f"{pname}_mask").detach().clone()
    return out


def apply_masks(model: nn.Module, masks: Dict[str, torch.Tensor]) -> nn.Module:
    """Install masks given as ``{"module.param": mask}`` (e.g. from :func:`get_masks` or a checkpoint)."""
    modules = dict(model.named_modules())
    for key, mask in masks.items():
        mod_name, _, pname = key.rpartition(".")
        if mod_name not in modules:
            raise PruningError(f"mask key {key!r} names no module of the model; known modules: {', '.join(list(modules)[:8])}...")
        set_mask(modules[mod_name], pname, mask)
    return model


def finalize(model: nn.Module) -> nn.Module:
    """Make masks permanent: ``weight = weight_orig * weight_mask`` as a plain parameter, hooks removed."""
    for _, module, pname in list(masked_modules(model)):
        torch_prune.remove(module, pname)
        with torch.no_grad():  # orig * 0 leaves -0.0 where orig < 0; store a plain +0.0
            getattr(module, pname).masked_fill_(getattr(module, pname) == 0, 0.0)
    return model


def sparsity_report(model: nn.Module) -> list[dict]:
    """Per weighted leaf module: numel, non-zeros and sparsity of its effective weight."""
    rows = []
    for name, module in model.named_modules():
        if not (hasattr(module, "weight") or is_masked(module)):
            continue
        w = effective(module)
        if not isinstance(w, torch.Tensor) or w.dim() == 0:
            continue
        numel = w.numel()
        nz = int(torch.count_nonzero(w.detach()))
        rows.append({"name": name, "type": type(module).__name__, "numel": numel, "nonzero": nz,
                     "sparsity": 1.0 - nz / numel if numel else 0.0, "masked": is_masked(module)})
    return rows


def global_sparsity(model: nn.Module) -> float:
    rows = sparsity_report(model)
    total = sum(r["numel"] for r in rows)
    return 1.0 - sum(r["nonzero"] for r in rows) / total if total else 0.0
