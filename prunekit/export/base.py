"""The exporter registry and export(): finalize a copy of the model, export it to a temp name, verify, then publish.

A file appears under the requested name only once it has been verified against eager PyTorch on the
example input and on a second, different input (see :mod:`prunekit.export.verify`): the exporter writes
into a hidden temp folder next to the target, and the files are moved into place with ``os.replace``
after the check passes. On any failure the temp folder is removed and an existing file under the
target name is left as it was.
"""
from __future__ import annotations

import inspect
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional

import torch
from torch import nn

from .._inputs import Inputs, run_model
from ..registry import Registry
from .errors import ExportError
from .prepare import finalized_copy
from .attempts import Attempt, failure_message
from .runners import RUNNERS
from .verify import Checker, Verification

log = logging.getLogger(__name__)

# An exporter is ``fn(model, example_inputs, path: Path, **kw) -> Path``; it receives a finalized
# eval-mode copy (no pruning masks), may write any files next to ``path`` and returns the main file.
# An exporter with a ``check`` keyword gets the verifier (``check(path) -> Verification``) to try
# alternatives when a written file fails it; otherwise export() verifies the file it returns.
Exporter = Callable[..., Path]
EXPORTERS: Registry[Exporter] = Registry("exporter")


def register_exporter(name: str, **kw):
    return EXPORTERS.register(name, **kw)


@dataclass
class ExportResult:
    """The written file and how it was verified (``None`` with ``verify=False`` or a format without a runner)."""

    path: Path
    verification: Optional[Verification] = None


def export(model: nn.Module, example_inputs: Inputs, path: str | Path, fmt: str = "onnx", *, verify: bool = True,
           atol: Optional[float] = None, rtol: Optional[float] = None, **kw) -> Path:
    """Export ``model`` (with its effective, mask-applied weights) to ``path`` in format ``fmt``; returns the file.

    ``fmt`` is a registered exporter name (``"onnx"``, ``"torchscript"``, or your own); extra keyword
    arguments go to that exporter. The user's model is not modified.

    With ``verify`` (the default) the written file is run (onnxruntime / torch.jit.load) on the example
    inputs and on a second, different input (other values, another batch size) and compared with eager
    PyTorch within ``atol + rtol * max|output|`` (defaults: 1e-4 for ONNX, 1e-5 for TorchScript). A
    model whose Python control flow or sizes were frozen by tracing fails this: :class:`ExportError`
    names the deviation on each input and the fix, and no file is left under ``path``.
    ``verify=False`` skips the check (the file is still written atomically).
    """
    return export_verified(model, example_inputs, path, fmt, verify=verify, atol=atol, rtol=rtol, **kw).path


def export_verified(model: nn.Module, example_inputs: Inputs, path: str | Path, fmt: str = "onnx", *,
                    verify: bool = True, atol: Optional[float] = None, rtol: Optional[float] = None,
                    check_inputs: Optional[Mapping[str, Inputs]] = None, **kw) -> ExportResult:
    """:func:`export`, returning the :class:`Verification` too (its per-input deviations, for reports).

    ``check_inputs`` (``{label: inputs}``, e.g. a batch of real test data) are verified as well,
    before the file is put in place.
    """
    exporter = EXPORTERS.get(fmt)
    path = _target(path)
    clone = finalized_copy(model)
    checker = None
    if verify and fmt in RUNNERS:
        # eager runs on the example (wrong inputs: InputError), the check inputs and the second input: nothing written yet
        checker = Checker(fmt, clone, example_inputs, atol=atol, rtol=rtol, check_inputs=check_inputs,
                          target=path).prepare()
    else:
        with torch.no_grad():
            run_model(clone, example_inputs)  # wrong inputs fail here with an InputError, before any exporter runs
        if verify:
            log.warning("exporter %r has no registered runner, so %s is written unverified; register one with "
                        "prunekit.export.register_runner(%r)", fmt, path, fmt)
        else:
            log.info("export to %s: verification skipped (verify=False)", path)
    _make_parent(path)
    try:
        tmpdir = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    except OSError as exc:
        raise ExportError(f"cannot write to the folder {path.parent} ({exc}); choose a writable output path") from exc
    try:
        target = tmpdir / path.name
        call_kw = dict(kw)
        if checker is not None and _accepts_check(exporter):
            call_kw["check"] = checker
        try:
            out = Path(exporter(clone, example_inputs, target, **call_kw))
        except ExportError as exc:  # messages name the final path, not the temp one
            raise ExportError(str(exc).replace(str(target), str(path)).replace(str(tmpdir), str(path.parent))) from exc
        if not out.is_file():
            raise ExportError(f"exporter {fmt!r} reported {out} but wrote no such file")
        verification = None
        if checker is not None:
            verification = checker.passed.get(out) or checker(out)
            if not verification.ok:
                raise ExportError(failure_message(fmt, clone, path, [Attempt(f"exporter {fmt!r}", verification=verification)]))
        final = _publish(tmpdir, out, path)
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)
    if verification is not None:
        verification.path = final
        log.info("exported %s; verified: %s", final, verification.describe())
    return ExportResult(final, verification)


def _target(path: str | Path) -> Path:
    """The export path, refused with an ExportError when it is a folder or lies under a file."""
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"export path {path} is a folder; pass a file path such as {path / 'model.onnx'}")
    if not path.name:
        raise ExportError(f"export path {str(path)!r} has no file name; pass a file path such as model.onnx")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise ExportError(f"cannot export to {path}: {parent} is a file, not a folder; choose another output path")
            break
    return path


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ExportError(f"cannot create the folder {path.parent} for {path} ({exc}); choose a writable output path") from exc


def _publish(tmpdir: Path, out: Path, path: Path) -> Path:
    """Move every file the exporter wrote into ``path``'s folder (the main file last); returns the main file's new path."""
    try:
        rel_main = out.resolve().relative_to(tmpdir.resolve())
    except ValueError:  # the exporter wrote its main file elsewhere: leave it there
        return out
    files = sorted(p for p in tmpdir.rglob("*") if p.is_file() and p.resolve() != out.resolve())
    try:
        for f in files + [out]:
            dest = path.parent / f.resolve().relative_to(tmpdir.resolve())
            dest.parent.mkdir(parents=True, exist_ok=True)
            os.replace(f, dest)
    except OSError as exc:
        raise ExportError(f"cannot move the verified export into place at {path} ({exc}); check the folder's "
                          "permissions and free space") from exc
    return path.parent / rel_main


def _accepts_check(exporter: Exporter) -> bool:
    try:
        params = inspect.signature(exporter).parameters
    except (TypeError, ValueError):
        return False
    p = params.get("check")
    return p is not None and p.kind in (inspect.Parameter.KEYWORD_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)
