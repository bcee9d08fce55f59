"""Progress reporting without printing: the library calls a Progress; the CLI plugs in progress bars."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Optional


class Task:
    """One unit of long work: ``advance()`` steps, ``note(**kv)`` attaches live metrics."""

    def advance(self, n: int = 1) -> None:
        pass

    def note(self, **values) -> None:
        pass


class Progress:
    """Null progress (the library default). Subclass it, as the CLI does with tqdm bars."""

    @contextmanager
    def task(self, description: str, total: Optional[int] = None) -> Iterator[Task]:
        yield Task()

    def message(self, text: str) -> None:
        """A one-line status message (the CLI shows it; the default drops it)."""


NULL_PROGRESS = Progress()


def ensure(progress: Optional[Progress]) -> Progress:
    return NULL_PROGRESS if progress is None else progress
