"""Fault and bad-input cases: each asserts the prunekit error type, a message naming the cause, and what is on disk."""
from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Dict, Iterable, Type

import pytest


def tree(root: Path) -> Dict[str, str]:
    """``{relative path: sha256}`` of every file under ``root`` (empty dict when it does not exist)."""
    root = Path(root)
    if not root.exists():
        return {}
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def assert_fault(excinfo: pytest.ExceptionInfo, kind: Type[BaseException], *words: Iterable[str]) -> str:
    """The raised error is ``kind`` and its message names every word (case-insensitive); returns the message."""
    assert excinfo.type is kind or issubclass(excinfo.type, kind), f"{excinfo.type.__name__}: {excinfo.value}"
    message = str(excinfo.value)
    for word in words:
        assert word.lower() in message.lower(), f"{word!r} not in {message!r}"
    return message


def no_temp_files(root: Path) -> None:
    """No half-written file (``*.tmp``) is left anywhere under ``root``."""
    left = [str(p) for p in Path(root).rglob("*.tmp*")]
    assert not left, left
