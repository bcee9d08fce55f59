"""ReducedModel: reducer + model as one module on raw inputs, and save_pipeline / load_pipeline for a directory."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Optional, Union

import torch
from torch import nn

from ..errors import ReducerError
from .reducer import Reducer
from .serialize import load_reducer, save_reducer

PIPELINE_FILE = "pipeline.json"
REDUCER_FILE = "reducer.skops"
MODEL_FILE = "model.safetensors"


class LinearReduction(nn.Module):
    """A fitted linear reducer as torch ops: flatten, then a frozen ``nn.Linear(D, k)`` (exports, counts MACs)."""

    def __init__(self, reducer: Reducer):
        super().__init__()
        a, c = reducer.affine_map()
        self.flatten = nn.Flatten()
        self.proj = nn.Linear(a.shape[1], a.shape[0])
        with torch.no_grad():
            self.proj.weight.copy_(torch.as_tensor(a, dtype=torch.float32))
            self.proj.bias.copy_(torch.as_tensor(c, dtype=torch.float32))
        self.proj.requires_grad_(False)
        self.n_features_in = int(a.shape[1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(x)
        if x.shape[1] != self.n_features_in:
            raise ReducerError(f"reducer expects {self.n_features_in} input features, got {x.shape[1]} (shape {tuple(x.shape)})")
        return self.proj(x)


class SklearnReduction(nn.Module):
    """A fitted non-linear reducer called through scikit-learn (CPU, no gradient, not exportable to ONNX)."""

    def __init__(self, reducer: Reducer):
        super().__init__()
        if not reducer.out_of_sample:
            reducer.transform(torch.zeros(1))  # raises the clear "no out-of-sample transform" error
        self.reducer = reducer

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.reducer.transform(x).to(x.device)


def reduction_module(reducer: Reducer) -> nn.Module:
    """The module applying ``reducer``: torch ops for linear reducers, a scikit-learn call otherwise."""
    reducer.check_fitted()
    return LinearReduction(reducer) if reducer.is_linear else SklearnReduction(reducer)


class ReducedModel(nn.Module):
    """``model(reducer(x))``: one callable on raw inputs. ``.reducer`` and ``.model`` stay accessible."""

    def __init__(self, reducer: Reducer, model: nn.Module):
        super().__init__()
        self.reduction = reduction_module(reducer)
        self.model = model
        self.reducer = reducer  # plain attribute, not a submodule

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(self.reduction(x))


def save_pipeline(directory: Union[str, os.PathLike], reducer: Reducer, model: nn.Module, *,
                  model_spec: Optional[dict] = None, metadata: Optional[dict] = None) -> Path:
    """Write ``reducer.skops`` + ``model.safetensors`` (prunekit.save) + ``pipeline.json`` into ``directory``."""
    from ..io import save

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    save_reducer(reducer, directory / REDUCER_FILE)
    save(model, directory / MODEL_FILE, model_spec=model_spec, metadata=metadata)
    info = {
        "format": "prunekit.pipeline/1", "reducer": REDUCER_FILE, "model": MODEL_FILE,
        "method": reducer.method, "n_components": reducer.n_components_, "input_shape": list(reducer.input_shape_),
    }
    from ..io.atomic import atomic_write_text

    atomic_write_text(directory / PIPELINE_FILE, json.dumps(info, indent=2), what="pipeline description")
    return directory


def load_pipeline(directory: Union[str, os.PathLike], model: Any = None, *,
                  trust_model_spec: bool = False) -> ReducedModel:
    """Load a directory written by :func:`save_pipeline` as a :class:`ReducedModel` taking raw inputs.

    ``model`` (an instance, registered name or factory of the reduced-input architecture) is
    only needed when the checkpoint does not record a registered model spec; a spec naming
    ``"package.module:factory"`` is imported only with ``trust_model_spec=True`` (see :func:`prunekit.load`).
    """
    from ..io import load

    directory = Path(directory)
    meta_path = directory / PIPELINE_FILE
    if not meta_path.is_file():
        raise ReducerError(f"{str(directory)!r} has no {PIPELINE_FILE}; write the pipeline with prunekit.reduce.save_pipeline")
    try:
        info = json.loads(meta_path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, ValueError) as exc:
        raise ReducerError(f"{str(meta_path)!r} is not valid JSON ({exc}); write the pipeline with "
                           "prunekit.reduce.save_pipeline") from exc
    reducer = load_reducer(_member(directory, info, "reducer"))
    net = load(_member(directory, info, "model"), model, trust_model_spec=trust_model_spec)
    return ReducedModel(reducer, net).eval()


def _member(directory: Path, info: dict, key: str) -> Path:
    """A file named by pipeline.json, which must be a plain name inside the pipeline's own folder."""
    name = info.get(key) if isinstance(info, dict) else None
    if not isinstance(name, str) or not name or Path(name).name != name or name in (".", ".."):
        raise ReducerError(f"{PIPELINE_FILE} in {str(directory)!r} names {key} file {name!r}; it must be a file name "
                           "inside the pipeline folder (no paths). Re-save the pipeline with prunekit.reduce.save_pipeline")
    return directory / name
