"""The exporter registry and export(): finalize a copy of the model, then hand it to the named exporter."""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch
from torch import nn

from .._inputs import Inputs, run_model
from ..registry import Registry
from .errors import ExportError
from .prepare import finalized_copy

# An exporter is ``fn(model, example_inputs, path: Path, **kw) -> Path``; it receives a finalized
# eval-mode copy (no pruning masks), may write any files next to ``path`` and returns the main file.
Exporter = Callable[..., Path]
EXPORTERS: Registry[Exporter] = Registry("exporter")


def register_exporter(name: str, **kw):
    return EXPORTERS.register(name, **kw)


def export(model: nn.Module, example_inputs: Inputs, path: str | Path, fmt: str = "onnx", **kw) -> Path:
    """Export ``model`` (with its effective, mask-applied weights) to ``path`` in format ``fmt``.

    ``fmt`` is a registered exporter name (``"onnx"``, ``"torchscript"``, or your own); extra
    keyword arguments go to that exporter. The user's model is not modified.
    """
    exporter = EXPORTERS.get(fmt)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clone = finalized_copy(model)
    with torch.no_grad():
        run_model(clone, example_inputs)  # wrong inputs fail here with an InputError, before any exporter runs
    out = exporter(clone, example_inputs, path, **kw)
    if not Path(out).exists():
        raise ExportError(f"exporter {fmt!r} reported {out} but wrote no such file")
    return Path(out)
