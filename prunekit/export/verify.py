"""Compare an exported file with eager PyTorch on the example and a second input; the Verification and its diagnosis.

Each format has a *runner* (:mod:`prunekit.export.runners`) that loads the written file and runs it; the
:class:`Checker` compares it with the eager model within ``atol + rtol * max|eager output|`` on the
example input and on a second, different input (:mod:`prunekit.export.second_input`).
"""
from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Mapping, Optional

import torch
from torch import nn

from .._inputs import Inputs, describe, run_model, to_device, with_batch_size
from ..errors import InputError
from .errors import ExportError, _short
from .prepare import finalized_copy, flat_outputs, max_abs_diff
from .runners import RUNNERS, RunnerSpec, register_runner  # noqa: F401  (RunnerSpec, register_runner: re-exported)
from .second_input import SEED, _batch, different_inputs, other_batch

log = logging.getLogger(__name__)


# ------------------------------------------------------------------------------------------------ results
@dataclass
class CheckResult:
    """The exported file against eager PyTorch on one input."""

    label: str  # "example input", "second input", ...
    inputs: str  # shapes and dtypes, e.g. "(Tensor(4, 4):float32)"
    max_abs_diff: float
    limit: float  # atol + rtol * max|eager output|
    error: Optional[str] = None  # the exported file could not run on this input

    @property
    def ok(self) -> bool:
        return self.error is None and self.max_abs_diff <= self.limit

    def describe(self) -> str:
        if self.error is not None:
            return f"{self.label} {self.inputs}: the exported file fails to run ({self.error})"
        verdict = "ok" if self.ok else "TOO LARGE"
        return f"{self.label} {self.inputs}: max |exported - eager| = {self.max_abs_diff:.3g} (limit {self.limit:.2g}, {verdict})"


@dataclass
class Verification:
    """Outcome of checking one exported file; ``ok`` when every input is within tolerance."""

    fmt: str
    path: Path
    results: List[CheckResult] = field(default_factory=list)
    cause: Optional[str] = None  # likely reason, when it failed
    hint: str = ""  # "values", "shape", "both", "example" or "load": what went wrong, for the advice

    @property
    def ok(self) -> bool:
        return bool(self.results) and all(r.ok for r in self.results)

    @property
    def max_abs_diff(self) -> float:
        return max((r.max_abs_diff for r in self.results), default=float("inf"))

    def diff(self, label: str) -> Optional[float]:
        return next((r.max_abs_diff for r in self.results if r.label == label), None)

    def describe(self) -> str:
        text = "; ".join(r.describe() for r in self.results)
        return text + (f". Likely cause: {self.cause}" if self.cause else "")

    def row(self) -> Dict[str, Any]:
        """Flat numbers for a results table: the max deviation overall and per input."""
        row: Dict[str, Any] = {"max_abs_diff": self.max_abs_diff}
        for r in self.results:
            row["max_abs_diff_" + re.sub(r"\W+", "_", r.label.replace(" input", "")).strip("_")] = r.max_abs_diff
        return row


# ------------------------------------------------------------------------------------------------ checker
class Checker:
    """Eager reference outputs of a finalized model; calling it on an exported file verifies that file.

    ``prepare()`` runs the eager model on the example (an :class:`InputError` when it does not fit) and
    on the second input, before anything is written.
    """

    def __init__(self, fmt: str, model: nn.Module, example_inputs: Inputs, *, atol: Optional[float] = None,
                 rtol: Optional[float] = None, check_inputs: Optional[Mapping[str, Inputs]] = None,
                 seed: int = SEED, target: Optional[Path] = None):
        self.fmt = fmt
        self.spec = RUNNERS.get(fmt)
        self.atol = self.spec.atol if atol is None else float(atol)
        self.rtol = self.spec.rtol if rtol is None else float(rtol)
        self.model = model
        self.device = _device(model)
        self.example = example_inputs
        self.check_inputs = dict(check_inputs or {})
        self.seed = seed
        self.target = target  # the final file name, for messages (the file is checked under a temp name)
        self.passed: Dict[Path, Verification] = {}
        self._eager: Dict[str, List[torch.Tensor]] = {}
        self._inputs: Dict[str, Inputs] = {}
        self._varied_batch: Optional[int] = None

    # eager side
    def _expected(self, key: str, inputs: Inputs) -> List[torch.Tensor]:
        if key not in self._eager:
            with torch.no_grad():
                out = run_model(self.model, to_device(inputs, self.device))
            self._eager[key] = [t.detach().cpu() for t in flat_outputs(out)]
            self._inputs[key] = inputs
        return self._eager[key]

    def prepare(self) -> "Checker":
        self._expected("example", self.example)  # InputError when the example does not fit the model
        for label, inputs in self.check_inputs.items():
            self._expected(label, inputs)
        batch = other_batch(self.example)
        if batch is not None:
            try:
                self._expected(f"second@{batch}", different_inputs(self.example, batch, seed=self.seed))
                self._varied_batch = batch
            except InputError:
                log.info("%s does not run at batch %d in eager PyTorch either; the export is checked at the example's "
                         "batch size only", type(self.model).__name__, batch)
        return self

    def _second(self, dynamic_batch: bool):
        if dynamic_batch and self._varied_batch is not None:
            key = f"second@{self._varied_batch}"
        else:
            key = "second"
            self._expected(key, different_inputs(self.example, None, seed=self.seed))
        return key

    # exported side
    def __call__(self, path: Path) -> Verification:
        path = Path(path)
        if not self._eager:
            self.prepare()
        verification = Verification(self.fmt, path)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.jit.load / onnxruntime deprecation notes
                runner = self.spec.load(path, self.device)
        except Exception as exc:
            verification.results.append(CheckResult("exported file", str(path.name), float("inf"), 0.0,
                                                    error=f"cannot be loaded: {_short(exc)}"))
            verification.hint, verification.cause = "load", "the written file is not loadable by its runtime"
            return verification
        dynamic = bool(getattr(runner, "dynamic_batch", True))
        second = self._second(dynamic)
        extra = [label for label, inputs in self.check_inputs.items()
                 if dynamic or _batch(inputs) == _batch(self.example)]  # a fixed-batch file takes that batch only
        cases = [("example input", "example")] + [(label, label) for label in extra] + [("second input", second)]
        for label, key in cases:
            verification.results.append(self._case(runner, label, key))
        if not verification.ok:
            self._diagnose(runner, verification, second)
        else:
            self.passed[path] = verification
        return verification

    def _case(self, runner, label: str, key: str, inputs: Optional[Inputs] = None) -> CheckResult:
        if inputs is not None:
            expected = self._expected(key, inputs)
        else:
            expected, inputs = self._eager[key], self._inputs[key]
        finite = [t[torch.isfinite(t)].abs().max() for t in expected if t.numel() and t.is_floating_point()
                  and torch.isfinite(t).any()]
        limit = self.atol + self.rtol * (float(max(finite)) if finite else 0.0)
        desc = describe(inputs)
        try:
            with torch.no_grad():
                got = runner(to_device(inputs, self.device))
            diff = max_abs_diff(expected, got)
        except Exception as exc:  # a size frozen by tracing often makes the file fail outright at another batch
            log.debug("exported %s failed on %s", self.fmt, label, exc_info=True)
            return CheckResult(label, desc, float("inf"), limit, error=_short(exc))
        return CheckResult(label, desc, diff, limit)

    def _diagnose(self, runner, verification: Verification, second: str) -> None:
        by_label = {r.label: r for r in verification.results}
        if not by_label["example input"].ok:
            verification.hint = "example"
            verification.cause = ("the exported model differs even on the example input: an op is translated with "
                                  "different semantics or precision")
            return
        if by_label["second input"].ok:
            verification.hint = "example"
            verification.cause = "the exported model differs on the extra check input"
            return
        example_batch = _batch(self.example)
        if second == "second":  # same batch as the example: only the values changed
            values_bad, shape_bad = True, False
        else:
            batch = int(second.split("@")[1])
            shape_bad = not self._case(runner, "batch only", f"batch-only@{batch}", with_batch_size(self.example, batch)).ok
            values_bad = not self._case(runner, "values only", "values-only",
                                        different_inputs(self.example, None, seed=self.seed)).ok
        causes = []
        if values_bad:
            causes.append("data-dependent Python control flow (e.g. `if x.sum() > 0:`) in forward() was frozen by "
                          "tracing to the branch the example input took (it differs with other values at the same "
                          "batch size)")
        if shape_bad:
            causes.append(f"a size computed in Python (e.g. float(x.size(0)), int(x.shape[0]), x.view({example_batch}, -1)) "
                          f"was frozen by tracing to the example's batch size {example_batch} (it differs at another batch "
                          "size with the example's values)")
        if not causes:
            causes.append("the exported graph specialises on the example input (its values or its batch size): "
                          "data-dependent Python control flow or a size computed in Python was frozen by tracing")
        verification.hint = "both" if values_bad and shape_bad else ("shape" if shape_bad else "values")
        verification.cause = "; and ".join(causes)


# ----------------------------------------------------------------------------------------- public checks
def verify_export(model: nn.Module, example_inputs: Inputs, path: str | Path, fmt: str, *, atol: Optional[float] = None,
                  rtol: Optional[float] = None, check_inputs: Optional[Mapping[str, Inputs]] = None,
                  seed: int = SEED) -> Verification:
    """Check the exported file ``path`` against eager ``model`` on ``example_inputs`` and a second, different input.

    ``model`` may still carry pruning masks (it is evaluated as a finalized eval-mode copy). The tolerance
    is ``atol + rtol * max|eager output|`` (defaults per format). Raises :class:`ExportError` naming the
    deviation on each input and the likely cause; returns the :class:`Verification` otherwise.
    """
    path = Path(path)
    if not path.is_file():
        raise ExportError(f"cannot verify {path}: no such file; export the model first")
    checker = Checker(fmt, finalized_copy(model), example_inputs, atol=atol, rtol=rtol, check_inputs=check_inputs,
                      seed=seed).prepare()
    verification = checker(path)
    if not verification.ok:
        raise ExportError(f"{_title(fmt)} model {path} differs from eager PyTorch: {verification.describe()}. "
                          f"What to do: {advice(fmt, verification.hint)}")
    return verification


# ---------------------------------------------------------------------------------------------- advice
def advice(fmt: str, hint: str) -> str:
    """What the user can do about a failed export of ``fmt`` whose verification failed with ``hint``."""
    tail = " (verify=False writes the file unchecked: not recommended)."
    script = ("for TorchScript use method='script', which keeps Python control flow" if fmt == "torchscript"
              else "or export fmt='torchscript' with method='script', which keeps Python control flow")
    branch = ("make the branch a tensor op: torch.where(cond, a, b) computes both sides and selects per element, or "
              "torch.cond(pred, true_fn, false_fn, (x,)) keeps both branches in the graph and exports with "
              f"fmt='onnx', dynamo=True (torch.export); {script}")
    shape = ("compute sizes with tensor ops instead of Python numbers (x.flatten(1), x.view(x.shape[0], -1), "
             "torch.ones_like(x), divide by x.new_tensor(x.shape[0])), or export with torch.export "
             "(fmt='onnx', dynamo=True), which keeps sizes symbolic")
    if hint == "values":
        return branch + tail
    if hint == "shape":
        return shape + ("; or pass dynamic_batch=False for a fixed-batch ONNX file" if fmt == "onnx" else "") + tail
    if hint == "both":
        return branch + "; and " + shape + tail
    if hint == "load":
        return "check the exporter's output and the runtime version (onnxruntime / torch)" + tail
    if fmt == "onnx":
        return ("try the other ONNX exporter (dynamo=True / dynamo=False) or another opset (opset=18), or loosen "
                "atol / rtol if the deviation is float rounding" + tail)
    return "try method='script' (or 'trace'), or loosen atol / rtol if the deviation is float rounding" + tail


# ---------------------------------------------------------------------------------------------- helpers
def _title(fmt: str) -> str:
    return {"onnx": "ONNX", "torchscript": "TorchScript"}.get(fmt, fmt)


def _device(model: nn.Module) -> torch.device:
    p = next(model.parameters(), None)
    if p is None:
        p = next(model.buffers(), None)
    return p.device if p is not None else torch.device("cpu")
