"""Atomic file writes: temp file in the same folder, then ``os.replace``, so no half file ever sits under a final name."""
from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Callable, Union

from ..errors import OutputError

PathLike = Union[str, os.PathLike]

_FIXES = {
    errno.ENOSPC: "free disk space or choose another output folder",
    errno.EDQUOT: "free space within your disk quota or choose another output folder",
    errno.EROFS: "the file system is read-only: choose a writable output folder",
    errno.EACCES: "you lack write permission there: choose another output folder or fix its permissions",
    errno.EPERM: "you lack write permission there: choose another output folder or fix its permissions",
    errno.ENOTDIR: "a path component is a file, not a folder: choose another output path",
    errno.EISDIR: "the path is a folder: give a file name",
}


def describe_os_error(exc: OSError, path: PathLike, what: str = "file") -> str:
    """One sentence naming the path, the cause (strerror) and what to do."""
    cause = exc.strerror or str(exc)
    fix = _FIXES.get(exc.errno, "check the path and the free space")
    return f"cannot write {what} {str(path)!r}: {cause} (errno {exc.errno}); {fix}"


def temp_path(path: Path) -> Path:
    """The temporary sibling ``path`` is written to before the rename (same folder, so the rename is atomic)."""
    return path.with_name(f".{path.name}.{os.getpid()}.tmp")


def atomic_write(path: PathLike, write: Callable[[Path], None], *, what: str = "file") -> Path:
    """Call ``write(tmp)`` then rename ``tmp`` onto ``path``; on any failure the temp file is removed.

    Files get the usual permissions of a new file (``0o666`` minus the umask). ``OSError``
    becomes :class:`OutputError` naming the path, the cause and the fix.
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write(tmp)
        os.replace(tmp, path)
    except OSError as exc:
        discard(tmp)
        raise OutputError(describe_os_error(exc, path, what)) from exc
    except BaseException:
        discard(tmp)
        raise
    return path


def atomic_write_text(path: PathLike, text: str, *, what: str = "file") -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"), what=what)


def atomic_write_bytes(path: PathLike, data: bytes, *, what: str = "file") -> Path:
    return atomic_write(path, lambda tmp: tmp.write_bytes(data), what=what)


def discard(tmp: Path) -> None:
    """Remove a temp file if it is there; a failure to remove it is ignored."""
    try:
        tmp.unlink()
    except OSError:
        pass
