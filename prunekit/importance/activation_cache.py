"""A store of per-batch activations that keeps at most ``max_memory`` bytes in memory and spills the rest to disk.

Block-by-block calibration (:mod:`prunekit.importance.sequential`) keeps every calibration batch's input to the
current block, and its output, between passes. :class:`ActivationCache` holds those values (a tensor or any
nesting of tuples / lists / dicts of tensors and plain values); all caches of one calibration share one
:class:`MemoryBudget`. A value that would take the memory held past the budget is written with ``torch.save`` to a
temporary folder (``tempfile``'s, so ``TMPDIR`` chooses where) and read back when asked for; the folder and its
files are removed when the budget is closed (``with MemoryBudget(...)``), an exception included.

What counts: the bytes of the cached tensors held in memory, nothing else (not the model's weights, not the
transient activations of the block being run).
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from typing import Any, Dict, Optional

import torch

from ..errors import ConfigError, PruningError

log = logging.getLogger(__name__)

UNITS = {"": 1, "b": 1, "kb": 10 ** 3, "mb": 10 ** 6, "gb": 10 ** 9, "tb": 10 ** 12,
         "kib": 2 ** 10, "mib": 2 ** 20, "gib": 2 ** 30, "tib": 2 ** 40}
_SIZE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([a-zA-Z]*)\s*$")


def parse_memory(value: Any, what: str = "max_memory") -> Optional[int]:
    """Bytes from ``value``: None (no bound), a non-negative int, or a string such as ``"2GB"`` / ``"512 MiB"``.

    Units as in Hugging Face accelerate's ``max_memory``: KB / MB / GB / TB are powers of 1000, KiB / MiB / GiB /
    TiB powers of 1024, B or no unit bytes (case-insensitive). Anything else is a :class:`ConfigError`.
    """
    if value is None:
        return None
    help_ = (f"{what} must be a number of bytes (an int >= 0) or a size string such as '2GB', '512MiB' or '0' "
             f"(units: {', '.join(u.upper() for u in UNITS if u and u != 'b')}, B); None keeps every cached "
             "activation in memory")
    if isinstance(value, bool):
        raise ConfigError(f"{help_}; got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ConfigError(f"{help_}; got the negative {value!r}")
        return value
    if isinstance(value, float) and value.is_integer() and value >= 0:
        return int(value)
    if isinstance(value, str):
        found = _SIZE.match(value)
        unit = found.group(2).lower() if found else None
        if found and unit in UNITS:
            return int(float(found.group(1)) * UNITS[unit])
        if found:
            raise ConfigError(f"{help_}; got {value!r} (unknown unit {found.group(2)!r})")
    raise ConfigError(f"{help_}; got {value!r}")


def nbytes(value: Any) -> int:
    """Bytes of every tensor inside ``value`` (tuples, lists and dict values searched)."""
    if isinstance(value, torch.Tensor):
        return value.element_size() * value.nelement()
    if isinstance(value, (tuple, list)):
        return sum(nbytes(v) for v in value)
    if isinstance(value, dict):
        return sum(nbytes(v) for v in value.values())
    return 0


class MemoryBudget:
    """The bytes all caches of one calibration may hold in memory (``limit``: None = unbounded), and their spill
    folder; a context manager that removes the folder on exit."""

    def __init__(self, limit: Optional[int] = None):
        self.limit = limit
        self.used = 0  # bytes held in memory by the caches now
        self.peak = 0  # the most held at once
        self.spilled = 0  # values written to disk so far
        self.spilled_bytes = 0
        self._dir: Optional[str] = None
        self._files = 0

    def fits(self, size: int) -> bool:
        return self.limit is None or self.used + size <= self.limit

    def hold(self, size: int) -> None:
        self.used += size
        self.peak = max(self.peak, self.used)

    def release(self, size: int) -> None:
        self.used -= size

    def new_file(self) -> str:
        if self._dir is None:
            self._dir = tempfile.mkdtemp(prefix="prunekit-activations-")
            log.info("block-by-block calibration: cached activations past max_memory=%s bytes go to %s",
                     self.limit, self._dir)
        self._files += 1
        return os.path.join(self._dir, f"{self._files}.pt")

    @property
    def directory(self) -> Optional[str]:
        """The spill folder, once something was spilled (None before and after :meth:`close`)."""
        return self._dir

    def close(self) -> None:
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            log.debug("removed %s (%d values, %d bytes spilled)", self._dir, self.spilled, self.spilled_bytes)
            self._dir = None

    def __enter__(self) -> "MemoryBudget":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class ActivationCache:
    """Values by batch index, in memory while ``budget`` allows, else on disk (read back by :meth:`get`)."""

    def __init__(self, budget: MemoryBudget):
        self.budget = budget
        self._memory: Dict[int, Any] = {}
        self._sizes: Dict[int, int] = {}
        self._files: Dict[int, str] = {}

    def put(self, index: int, value: Any) -> None:
        self.drop(index)
        size = nbytes(value)
        if self.budget.fits(size):
            self._memory[index], self._sizes[index] = value, size
            self.budget.hold(size)
            return
        path = self.budget.new_file()
        try:
            torch.save(value, path)
        except (TypeError, AttributeError, RuntimeError, OSError) as exc:  # pickling failed or the disk is full
            raise PruningError(f"block-by-block calibration could not write a cached activation to {path} "
                               f"({exc}); raise max_memory (or set it to None) to keep it in memory") from exc
        self._files[index] = path
        self.budget.spilled += 1
        self.budget.spilled_bytes += size

    def get(self, index: int) -> Any:
        if index in self._memory:
            return self._memory[index]
        if index in self._files:
            return torch.load(self._files[index], weights_only=False)  # our own file, written by put()
        raise KeyError(index)

    def drop(self, index: int) -> None:
        if index in self._memory:
            del self._memory[index]
            self.budget.release(self._sizes.pop(index))
        path = self._files.pop(index, None)
        if path is not None and os.path.exists(path):
            os.remove(path)

    def clear(self) -> None:
        for index in list(self._memory) + list(self._files):
            self.drop(index)

    def __len__(self) -> int:
        return len(self._memory) + len(self._files)
