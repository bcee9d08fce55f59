"""Checkpoints: safetensors (or weights-only torch files) + JSON metadata; loading never unpickles code."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Union

import torch
from torch import nn

from ..errors import CheckpointError
from ..modelutils import clone_model
from ..models import create_model
from ..unstructured.masks import get_masks, set_mask

FORMAT_VERSION = "1"
META_KEY = "__prunekit_metadata__"  # torch-file variant stores metadata under this key


def save(model: nn.Module, path: Union[str, os.PathLike], *, sparse: bool = False,
         metadata: Optional[Dict[str, Any]] = None, model_spec: Optional[Dict[str, Any]] = None) -> Path:
    """Write ``model``'s weights, masks and pruning plan to ``path``.

    ``.safetensors`` (default) or ``.pt``/``.pth`` (a weights-only torch file). With
    ``sparse=True`` the tensors use prunekit's bitmap sparse storage (smaller on disk;
    masked weights are stored as their effective values). ``model_spec`` (``{"name":
    registered name or "pkg.mod:factory", "kwargs": {...}}``) lets :func:`load` rebuild
    the architecture without being handed one.
    """
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    masks = get_masks(model)
    if sparse:
        from ..measure.counts import masked_value
        from ..measure.storage import to_sparse_state

        for key in masks:  # store weight_orig as orig*mask (+0.0 where pruned) so it compresses; forward unchanged
            state[f"{key}_orig"] = masked_value(state[f"{key}_orig"], state[f"{key}_mask"])
        state = to_sparse_state(state)
    meta = {
        "format": "prunekit", "version": FORMAT_VERSION, "sparse": sparse,
        "masked": sorted(masks), "plan": _plan_of(model), "model_spec": model_spec or getattr(model, "_prunekit_spec", None),
        "user": metadata or {},
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    if _is_torch_file(path):
        torch.save({**state, META_KEY: json.dumps(meta)}, tmp)
    else:
        from safetensors.torch import save_file

        save_file(state, str(tmp), metadata={"prunekit": json.dumps(meta)})
    os.replace(tmp, path)  # never leave a half-written checkpoint under the real name
    return path


def read_checkpoint(path: Union[str, os.PathLike]) -> tuple[Dict[str, torch.Tensor], dict]:
    """``(state_dict, metadata)`` of a prunekit checkpoint, decoded from sparse storage if needed."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    try:
        if _is_torch_file(path):
            raw = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(raw, dict):
                raise CheckpointError(f"{path} does not hold a state dict (got {type(raw).__name__})")
            meta = json.loads(raw.pop(META_KEY, "{}"))
            state = raw
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                meta = json.loads((f.metadata() or {}).get("prunekit", "{}"))
                state = {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as exc:  # truncated / corrupt / not a checkpoint: every reader error ends here
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: it is truncated, corrupt or not a safetensors/torch weights file "
            f"({type(exc).__name__}: {str(exc)[:300]}). A whole pickled model (torch.save(model)) is refused because "
            "loading it would execute code: save model.state_dict() or use prunekit.save."
        ) from exc
    if meta.get("sparse"):
        from ..measure.storage import from_sparse_state

        state = from_sparse_state(state)
    return state, meta


def load(path: Union[str, os.PathLike], model: Union[nn.Module, str, Callable[[], nn.Module], None] = None,
         *, strict: bool = True) -> nn.Module:
    """Rebuild a saved model: architecture (given, or from the saved spec) -> pruning plan -> masks -> weights.

    A given model instance is copied, never modified; the loaded copy is returned.
    Nothing is returned unless everything fits: shapes are checked before loading and a
    mismatch raises :class:`CheckpointError` listing the offending keys.
    """
    state, meta = read_checkpoint(path)
    model = _architecture(model, meta, path)
    plan = meta.get("plan")
    if plan:
        from ..structured import apply_plan

        model = apply_plan(model, plan)
    for key in meta.get("masked", []):
        mod_name, _, pname = key.rpartition(".")
        module = model.get_submodule(mod_name)
        if not hasattr(module, pname):
            raise CheckpointError(f"checkpoint masks {key!r} but the model has no such parameter")
        set_mask(module, pname, torch.ones_like(getattr(module, pname)))
    _check_compatible(model, state, strict, path)
    model.load_state_dict(state, strict=strict)
    if meta.get("model_spec"):
        model._prunekit_spec = meta["model_spec"]
    return model.eval()


def _architecture(model, meta: dict, path) -> nn.Module:
    if isinstance(model, nn.Module):
        return clone_model(model)  # the caller's instance stays untouched if loading fails
    if isinstance(model, str):
        return create_model(model)
    if callable(model):
        return model()
    spec = meta.get("model_spec")
    if not spec:
        raise CheckpointError(
            f"{path} does not record its architecture; pass model=<an instance, a registered name or a factory>"
        )
    return create_model(spec["name"], **spec.get("kwargs", {}))


def _check_compatible(model: nn.Module, state: Dict[str, torch.Tensor], strict: bool, path) -> None:
    expected = model.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
             for k, v in state.items() if k in expected and tuple(expected[k].shape) != tuple(v.shape)]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if wrong:
        problems.append("shape mismatch: " + "; ".join(wrong[:6]))
    if strict and missing:
        problems.append("missing keys: " + ", ".join(missing[:6]))
    if strict and unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected[:6]))
    if problems:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match the model ({' | '.join(problems)}). "
            "Load it into the architecture it was saved from (same model and constructor arguments)."
        )


def _plan_of(model: nn.Module):
    plan = getattr(model, "_prunekit_plan", None)
    return plan if plan else None


def _is_torch_file(path: Path) -> bool:
    return path.suffix in (".pt", ".pth", ".bin")
