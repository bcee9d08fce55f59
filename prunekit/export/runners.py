"""How an exported file is run to verify it: the RUNNERS registry (register_runner) and the ONNX / TorchScript runners."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, List

import numpy as np
import torch

from .._inputs import Inputs, split_inputs
from ..registry import Registry
from .errors import ExportError
from .prepare import flat_outputs, input_names


@dataclass(frozen=True)
class RunnerSpec:
    """How to load one export format: ``load(path, device) -> runner`` and its default tolerance.

    A runner is called with inputs (same structure as the example inputs) and returns the flat list of
    output tensors; its ``dynamic_batch`` attribute says whether the file accepts other batch sizes.
    """

    load: Callable[[Path, torch.device], Any]
    atol: float = 1e-4
    rtol: float = 1e-4


RUNNERS: Registry[RunnerSpec] = Registry("export runner")


def register_runner(fmt: str, *, atol: float = 1e-4, rtol: float = 1e-4, override: bool = False):
    """``@register_runner("myfmt")`` on ``load(path, device) -> runner`` makes ``export(fmt="myfmt")`` verify its files."""

    def deco(load):
        RUNNERS.add(fmt, RunnerSpec(load, atol, rtol), override=override)
        return load

    return deco


# -------------------------------------------------------------------------------------------------- ONNX
class _OrtRunner:
    """An onnxruntime CPU session fed by name from inputs shaped like the example inputs."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.log_severity_level = 4  # failures are reported in the ExportError, not logged to stderr
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        self.run_options = ort.RunOptions()
        self.run_options.log_severity_level = 4
        self.inputs = self.session.get_inputs()
        self.dynamic_batch = all(not isinstance(i.shape[0], int) for i in self.inputs if len(i.shape) > 0)

    def __call__(self, inputs: Inputs) -> List[torch.Tensor]:
        args, kwargs = split_inputs(inputs)
        values = list(args) + list(kwargs.values())
        names = input_names(inputs)
        feeds = {}
        for inp in self.inputs:
            if inp.name not in names:
                raise ExportError(f"ONNX input {inp.name!r} has no matching example input; example inputs are {names}")
            feeds[inp.name] = values[names.index(inp.name)].detach().cpu().numpy()
        return [torch.from_numpy(np.asarray(o)) for o in self.session.run(None, feeds, self.run_options)]


@register_runner("onnx", atol=1e-4, rtol=1e-4)
def _load_onnx(path: Path, device: torch.device) -> _OrtRunner:
    return _OrtRunner(path)


# ------------------------------------------------------------------------------------------- TorchScript
class _JitRunner:
    dynamic_batch = True  # a TorchScript module takes any batch size (a frozen size shows up as a deviation)

    def __init__(self, path: Path, device: torch.device):
        self.module = torch.jit.load(str(path), map_location=device).eval()

    def __call__(self, inputs: Inputs) -> List[torch.Tensor]:
        args, kwargs = split_inputs(inputs)
        with torch.no_grad():
            return flat_outputs(self.module(*args, **kwargs))


@register_runner("torchscript", atol=1e-5, rtol=1e-5)
def _load_torchscript(path: Path, device: torch.device) -> _JitRunner:
    return _JitRunner(path, device)
