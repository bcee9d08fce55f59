"""results.json: every number JSON-safe (numpy / tensors -> Python, NaN and inf -> null)."""
from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np

RESULTS_FILE = "results.json"


def to_jsonable(obj: Any) -> Any:
    """Plain JSON types for ``obj``: numpy scalars/arrays and tensors become numbers/lists, NaN/inf None,
    dataclasses dicts, paths strings, sets sorted lists; anything else its ``str``."""
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return int(obj)
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, np.generic):
        return to_jsonable(obj.item())
    if isinstance(obj, np.ndarray):
        return to_jsonable(obj.tolist())
    if _is_tensor(obj):
        return to_jsonable(obj.detach().cpu().tolist())
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_jsonable(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, (set, frozenset)):
        return sorted((to_jsonable(v) for v in obj), key=str)
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


def _is_tensor(obj: Any) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover - torch is a dependency
        return False
    return isinstance(obj, torch.Tensor)


def write_results(out_dir: str | Path, results: dict) -> Path:
    """Write ``results`` to ``out_dir/results.json`` atomically (folder created if needed); returns the path."""
    from ..io.atomic import atomic_write_text

    text = json.dumps(to_jsonable(results), indent=2, allow_nan=False)
    return atomic_write_text(Path(out_dir) / RESULTS_FILE, text + "\n", what="results")


def read_results(path: str | Path) -> dict:
    """Load a results.json (a file or the folder holding it)."""
    p = Path(path)
    if p.is_dir():
        p = p / RESULTS_FILE
    return json.loads(p.read_text(encoding="utf-8"))
