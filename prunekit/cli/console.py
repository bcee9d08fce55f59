"""Terminal output for the CLI: tqdm progress bars and aligned tables (the library itself never prints)."""
from __future__ import annotations

import re
import sys
import time
from contextlib import contextmanager
from typing import Optional, Sequence

from tqdm.auto import tqdm

from ..progress import Progress, Task


class _TqdmTask(Task):
    def __init__(self, bar):
        self.bar = bar

    def advance(self, n: int = 1) -> None:
        self.bar.update(n)

    def note(self, **values) -> None:
        self.bar.set_postfix({k: _short(v) for k, v in values.items()}, refresh=False)


class _LineTask(Task):
    """Progress for a log file: a line every ``every`` seconds and one when the task ends, no carriage returns."""

    def __init__(self, description: str, total: Optional[int], depth: int, every: float):
        self.description, self.total, self.depth, self.every = description, total, depth, every
        self.done, self.notes = 0, {}
        self.start = self.last = time.monotonic()

    def advance(self, n: int = 1) -> None:
        self.done += n
        if time.monotonic() - self.last >= self.every:
            self.write()

    def note(self, **values) -> None:
        self.notes.update(values)

    def write(self, end: bool = False) -> None:
        self.last = time.monotonic()
        count = f"{self.done}/{self.total}" if self.total else str(self.done)
        notes = "".join(f", {k}={_short(v)}" for k, v in self.notes.items())
        state = "done" if end else "at"
        print(f"{'  ' * self.depth}{self.description}: {state} {count} in {self.last - self.start:.1f} s{notes}",
              file=sys.stderr, flush=True)


class TqdmProgress(Progress):
    """Progress bars on stderr; disabled with ``quiet``.

    When stderr is not a terminal (a log file, CI), bars would fill the log with carriage returns,
    so each task writes plain lines instead: one every ``log_every`` seconds, and one when it ends
    if it is an outer task (nesting depth 0 or 1) or took at least ``log_every`` seconds
    (``interactive`` forces either style).
    """

    def __init__(self, quiet: bool = False, interactive: Optional[bool] = None, log_every: float = 30.0):
        self.quiet = quiet
        self.interactive = _isatty(sys.stderr) if interactive is None else interactive
        self.log_every = log_every
        self.depth = 0

    @contextmanager
    def task(self, description: str, total: Optional[int] = None):
        if not self.interactive and not self.quiet:
            line = _LineTask(description, total, self.depth, self.log_every)
            self.depth += 1
            try:
                yield line
            finally:
                self.depth -= 1
                if self.depth <= 1 or time.monotonic() - line.start >= self.log_every:
                    line.write(end=True)  # deep, quick tasks (an evaluation pass) stay silent
            return
        bar = tqdm(total=total, desc=description, leave=False, disable=self.quiet, dynamic_ncols=True, file=sys.stderr)
        try:
            yield _TqdmTask(bar)
        finally:
            bar.close()

    def message(self, text: str) -> None:
        if not self.quiet:
            tqdm.write(f"· {text}", file=sys.stderr)


def _isatty(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def _short(v):
    return f"{v:.4g}" if isinstance(v, float) else v


def human(value, unit: str = "") -> str:
    """1234567 -> '1.23M'; bytes -> 'KB/MB'; floats keep 4 significant digits."""
    if value is None:
        return "-"
    if isinstance(value, float) and value != value:
        return "nan"
    if unit == "B":
        for u in ("B", "KB", "MB", "GB"):
            if abs(value) < 1024 or u == "GB":
                return f"{value:.1f} {u}" if u != "B" else f"{int(value)} B"
            value /= 1024
    if isinstance(value, int) or (isinstance(value, float) and value.is_integer() and abs(value) >= 1000):
        v = float(value)
        for u, d in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
            if abs(v) >= d:
                return f"{v / d:.2f}{u}"
        return str(int(v))
    return f"{value:.4g}"


def table(rows: Sequence[Sequence], headers: Sequence[str]) -> str:
    cells = [[str(c) for c in r] for r in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    line = "  ".join(h.ljust(w) for h, w in zip(headers, widths))
    sep = "  ".join("-" * w for w in widths)
    numeric = [i > 0 and all(re.match(r"^[-+x/]?[\d.]", r[i]) or r[i] in ("-", "yes", "no") for r in cells)
               for i in range(len(headers))]
    body = ["  ".join(c.rjust(w) if numeric[i] else c.ljust(w) for i, (c, w) in enumerate(zip(r, widths)))
            for r in cells]
    return "\n".join([line, sep, *body])


COMPARE_ROWS = [
    ("test accuracy", "accuracy", "%"), ("macro recall (coverage)", "recall_macro", "%"),
    ("macro false-positive rate", "fpr_macro", "%"), ("test loss", "loss", ""),
    ("parameters", "params", ""), ("non-zero parameters", "nonzero_params", ""),
    ("MACs (dense)", "macs", ""), ("MACs (non-zero)", "nonzero_macs", ""),
    ("bytes on disk (dense)", "size_bytes", "B"), ("bytes on disk (sparse)", "sparse_size_bytes", "B"),
    ("latency batch 1 (ms)", "latency_ms_b1", "ms"), ("latency batch 64 (ms)", "latency_ms_b64", "ms"),
]


def compare_table(before: dict, after: dict) -> str:
    rows = []
    for label, key, unit in COMPARE_ROWS:
        if key not in before and key not in after:
            continue
        b, a = before.get(key), after.get(key)
        if unit == "%":
            fb, fa = f"{100 * b:.2f}%", f"{100 * a:.2f}%"
            change = f"{100 * (a - b):+.2f} pt"
        elif unit == "ms":
            fb, fa = f"{b:.3f}", f"{a:.3f}"
            change = f"x{b / a:.2f} speed-up" if a else "-"
        else:
            fb, fa = human(b, unit), human(a, unit)
            change = f"/{b / a:.2f}" if a and isinstance(b, (int, float)) and key != "loss" else f"{a - b:+.4g}"
        rows.append((label, fb, fa, change))
    return table(rows, ["metric", "before", "after", "change"])


def emit(text: str = "") -> None:
    print(text)


def emit_err(text: str) -> None:
    print(text, file=sys.stderr)
