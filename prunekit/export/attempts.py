"""Trying an exporter's methods in turn (write, verify, fall back): each Attempt, tracer warnings, the failure message."""
from __future__ import annotations

import linecache
import logging
import os
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import torch
from torch import nn

from .errors import _short
from .verify import Verification, _title, advice

log = logging.getLogger(__name__)


@dataclass
class Attempt:
    """One way an exporter tried (``"legacy exporter"``, ``"trace"``...): it raised, or wrote a file that was checked."""

    method: str
    error: Optional[str] = None
    verification: Optional[Verification] = None
    tracer_warnings: List[str] = field(default_factory=list)

    def describe(self) -> str:
        if self.error is not None:
            return f"[{self.method}] could not export: {self.error}"
        text = f"[{self.method}] exported, but {self.verification.describe()}"
        if self.tracer_warnings:
            text += ". The tracer warned: " + " | ".join(self.tracer_warnings)
        return text


# ------------------------------------------------------------------------------------------- trying methods
@dataclass(frozen=True)
class Method:
    """One way to write the file: ``write()`` writes it to the exporter's path and returns its TracerWarnings."""

    label: str  # in the Attempt and the warnings: "torch.jit.trace", "legacy exporter (tracing)"
    write: Callable[[], List[str]]
    name: str = ""  # a short name for debug logs ("trace"); the label when empty


@dataclass(frozen=True)
class TryMessages:
    """One exporter's log lines for :func:`try_methods`, %-style with the fields ``%(name)s`` (the method's
    short name), ``%(label)s``, ``%(model)s`` (the model's class name), ``%(attempts)s`` (the failed attempts),
    ``%(details)s`` (the verification) and ``%(warnings)s`` (the tracer warnings)."""

    write_failed: str  # debug, with the traceback: a method raised
    verify_failed: str  # debug: a method's file failed verification
    fallback_used: str  # warning: a later method passed after earlier ones failed
    tracer_warned: str  # warning: the file passed, but tracing warned


def try_methods(model: nn.Module, path: Path, methods: Sequence[Method], check: Optional[Callable[[Path], Verification]],
                messages: TryMessages, logger: logging.Logger = log) -> Tuple[bool, List[Attempt]]:
    """Write ``path`` with each method in turn until one's file passes ``check`` (or is written, without ``check``).

    Returns ``(True, failed attempts before it)`` when one passed, ``(False, every attempt)`` otherwise; the
    caller turns the attempts into its :class:`ExportError` (:func:`failure_message`).
    """
    attempts: List[Attempt] = []
    for method in methods:
        fields = {"name": method.name or method.label, "label": method.label, "model": type(model).__name__}
        try:
            traced = method.write()
        except Exception as exc:  # each exporter fails in its own way; keep the messages for the user
            attempts.append(Attempt(method.label, error=_short(exc)))
            logger.debug(messages.write_failed, fields, exc_info=True)
            continue
        verification = check(path) if check is not None else None
        if verification is not None and not verification.ok:
            attempts.append(Attempt(method.label, verification=verification, tracer_warnings=traced))
            logger.debug(messages.verify_failed, dict(fields, details=verification.describe()))
            continue
        if attempts:
            logger.warning(messages.fallback_used, dict(fields, attempts=" ".join(a.describe() for a in attempts)))
        if traced:
            logger.warning(messages.tracer_warned, dict(fields, warnings=" | ".join(traced)))
        return True, attempts
    return False, attempts


# ---------------------------------------------------------------------------------------- failure message
def failure_message(fmt: str, model: nn.Module, path: Path, attempts: Sequence[Attempt], extra_advice: str = "") -> str:
    """The ExportError text when no attempt produced a verified file."""
    hints = [a.verification.hint for a in attempts if a.verification is not None]
    hint = next((h for h in hints if h in ("values", "both")), next(iter(hints), ""))
    verified = any(a.verification is not None for a in attempts)
    head = (f"{_title(fmt)} export of {type(model).__name__} differs from eager PyTorch, so {path} was not written. "
            if verified else f"could not export {type(model).__name__} to {_title(fmt)} ({path} was not written). ")
    return (head + " ".join(a.describe() + "." for a in attempts) + f" What to do: {extra_advice}{advice(fmt, hint)}")


# -------------------------------------------------------------------------------------------- warnings
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep


def tracer_warnings(caught: Sequence[warnings.WarningMessage]) -> List[str]:
    """``file:line `source`: message`` for each distinct TracerWarning (they name the offending line of forward()).

    Warnings raised inside torch itself (its modules' shape sanity checks such as ``if size_prods == 1:``)
    are harmless and only debug-logged; the ones in the model's own code are returned.
    """
    out: List[str] = []
    for w in caught:
        if not issubclass(w.category, torch.jit.TracerWarning):
            continue
        if os.path.abspath(w.filename).startswith(_TORCH_DIR):
            log.debug("TracerWarning inside torch (%s:%s): %s", w.filename, w.lineno, w.message)
            continue
        source = linecache.getline(w.filename, w.lineno).strip()
        message = str(w.message).split(". ")[0].strip()
        text = f"{os.path.basename(w.filename)}:{w.lineno}" + (f" `{source}`" if source else "") + f": {message}"
        if text not in out:
            out.append(text)
    return out


def log_other_warnings(caught: Sequence[warnings.WarningMessage]) -> None:
    """Warnings an exporter raised that are not TracerWarnings (mostly deprecation notes): debug log only."""
    for w in caught:
        if not issubclass(w.category, torch.jit.TracerWarning):
            log.debug("%s: %s", w.category.__name__, w.message)
