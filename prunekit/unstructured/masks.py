"""Weight masks in torch.nn.utils.prune's convention (``weight_orig`` + ``weight_mask`` + forward pre-hook).

Some modules read a masked parameter without calling the module that owns it:
``nn.MultiheadAttention`` passes ``self.out_proj.weight`` to ``F.multi_head_attention_forward`` and
``nn.TransformerEncoderLayer``'s fused path reads its children's weights directly. The owner's pre-hook
never runs there, so such a *functional parent* gets a :class:`RefreshMasks` pre-hook of its own that
recomputes ``param = param_orig * param_mask`` for every masked parameter below it before its forward
(:func:`attach_refresh_hooks`). State-dict keys stay those of torch.nn.utils.prune.
"""
from __future__ import annotations

from typing import Dict, Iterator, Tuple

import torch
from torch import nn
from torch.nn.utils import prune as torch_prune

from ..errors import PruningError

# modules whose forward reads (masked) parameters of their children functionally, bypassing the children's hooks
FUNCTIONAL_PARENTS: Tuple[type, ...] = (nn.MultiheadAttention, nn.TransformerEncoderLayer)


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
    """Install ``mask`` (1 = keep) on ``module.name``; an existing mask is replaced in place.

    The value left in ``module.name`` until the next forward is computed without autograd, so a
    stale copy can never drag an old graph into a later backward; the forward pre-hook (or a
    functional parent's :class:`RefreshMasks` hook, see :func:`attach_refresh_hooks`) recomputes
    it with gradients to ``name_orig`` on every call.
    """
    param = trainable(module, name)
    if not isinstance(param, torch.Tensor):
        raise PruningError(f"{type(module).__name__} has no tensor {name!r} to mask (got {type(param).__name__})")
    if mask.shape != param.shape:
        raise PruningError(f"mask of shape {tuple(mask.shape)} does not fit {name!r} of shape {tuple(param.shape)}")
    mask = mask.to(device=param.device, dtype=param.dtype)
    if is_masked(module, name):
        getattr(module, f"{name}_mask").copy_(mask)
    else:
        torch_prune.custom_from_mask(module, name, mask)
    _refresh(module, name, grad=False)


def _refresh(module: nn.Module, name: str, grad: bool = True) -> None:
    with torch.set_grad_enabled(grad and torch.is_grad_enabled()):
        setattr(module, name, getattr(module, f"{name}_orig") * getattr(module, f"{name}_mask"))


def refresh_masked(model: nn.Module) -> nn.Module:
    """Recompute every masked ``p = p_orig * p_mask`` now (no autograd graph), e.g. after ``load_state_dict``
    replaced the ``_orig`` / ``_mask`` tensors, so ``module.weight`` is right before the next forward."""
    for _, module, pname in masked_modules(model):
        _refresh(module, pname, grad=False)
    return model


def masked_modules(model: nn.Module) -> Iterator[Tuple[str, nn.Module, str]]:
    """Yield ``(module_name, module, param_name)`` for every masked parameter."""
    for mod_name, module in model.named_modules():
        for pname in _masked_names(module):
            yield mod_name, module, pname


def _masked_names(module: nn.Module) -> list:
    out = []
    for hook in module._forward_pre_hooks.values():
        hooks = hook._pruning_methods if isinstance(hook, torch_prune.PruningContainer) else [hook]
        for h in hooks:
            if isinstance(h, torch_prune.BasePruningMethod) and is_masked(module, h._tensor_name):
                out.append(h._tensor_name)
                break
    return out


class RefreshMasks:
    """Forward pre-hook of a functional parent: ``p = p_orig * p_mask`` for every masked parameter below it.

    Stateless (the masked parameters are looked up at call time), so it survives deepcopy, finalize
    of single layers and re-pruning; it does nothing once no masked parameter is left below it.
    """

    def __call__(self, module: nn.Module, args) -> None:
        for sub in module.modules():
            if sub is module:  # the parent's own masked parameters are refreshed by its own pruning hooks
                continue
            for pname in _masked_names(sub):
                _refresh(sub, pname)
        return None


def attach_refresh_hooks(model: nn.Module) -> nn.Module:
    """Give every functional parent (:data:`FUNCTIONAL_PARENTS`) with a masked parameter below it a
    :class:`RefreshMasks` pre-hook (once); call after installing masks on a model."""
    for module in model.modules():
        if not isinstance(module, FUNCTIONAL_PARENTS) or _has_refresh_hook(module):
            continue
        if any(_masked_names(sub) for sub in module.modules() if sub is not module):
            module.register_forward_pre_hook(RefreshMasks())
    return model


def _has_refresh_hook(module: nn.Module) -> bool:
    return any(isinstance(h, RefreshMasks) for h in module._forward_pre_hooks.values())


def remove_refresh_hooks(model: nn.Module) -> nn.Module:
    """Drop every :class:`RefreshMasks` hook (after the masks are folded into plain parameters)."""
    for module in model.modules():
        for key in [k for k, h in module._forward_pre_hooks.items() if isinstance(h, RefreshMasks)]:
            del module._forward_pre_hooks[key]
            for extra in ("_forward_pre_hooks_with_kwargs", "_forward_pre_hooks_always_called"):
                getattr(module, extra, {}).pop(key, None)
    return model


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
    return attach_refresh_hooks(model)


def finalize(model: nn.Module) -> nn.Module:
    """Make masks permanent: ``weight = weight_orig * weight_mask`` as a plain parameter, hooks removed."""
    for _, module, pname in list(masked_modules(model)):
        torch_prune.remove(module, pname)
        with torch.no_grad():  # orig * 0 leaves -0.0 where orig < 0; store a plain +0.0
            getattr(module, pname).masked_fill_(getattr(module, pname) == 0, 0.0)
    return remove_refresh_hooks(model)


def weight_params(module: nn.Module) -> Tuple[str, ...]:
    """Names of the weight matrices weight pruning masks on ``module``: ``in_proj_weight`` (or
    ``q/k/v_proj_weight``) for nn.MultiheadAttention (its ``out_proj`` is a Linear of its own), else ``weight``."""
    if isinstance(module, nn.MultiheadAttention):
        names = ("in_proj_weight",) if module._qkv_same_embed_dim else ("q_proj_weight", "k_proj_weight", "v_proj_weight")
        return tuple(n for n in names if isinstance(getattr(module, n, None), torch.Tensor) or is_masked(module, n))
    return ("weight",) if hasattr(module, "weight") or is_masked(module) else ()


def sparsity_report(model: nn.Module) -> list[dict]:
    """Per weighted module: numel, non-zeros and sparsity of its effective weight (``param`` names which;
    nn.MultiheadAttention's ``in_proj_weight`` rows are named ``<module>.in_proj_weight``)."""
    rows = []
    for name, module in model.named_modules():
        for pname in weight_params(module):
            w = effective(module, pname)
            if not isinstance(w, torch.Tensor) or w.dim() == 0:
                continue
            numel = w.numel()
            nz = int(torch.count_nonzero(w.detach()))
            row_name = name if pname == "weight" else (f"{name}.{pname}" if name else pname)
            rows.append({"name": row_name, "type": type(module).__name__, "param": pname, "numel": numel,
                         "nonzero": nz, "sparsity": 1.0 - nz / numel if numel else 0.0,
                         "masked": is_masked(module, pname)})
    return rows


def global_sparsity(model: nn.Module) -> float:
    rows = sparsity_report(model)
    total = sum(r["numel"] for r in rows)
    return 1.0 - sum(r["nonzero"] for r in rows) / total if total else 0.0
