"""Writing a checkpoint file safely: a temp sibling with the umask's mode, renamed into place; failures become CheckpointError."""
from __future__ import annotations

import errno
import os
import re
from pathlib import Path
from typing import Callable, Optional

from ..errors import CheckpointError
from .atomic import describe_os_error, discard, temp_path

_UNCHANGED = "nothing was written (an earlier file at that path is unchanged)"


def write_checkpoint_file(path: Path, write: Callable[[Path], None]) -> None:
    """``write(tmp)`` then rename onto ``path``; any failure removes ``tmp`` and raises CheckpointError."""
    if path.is_dir():
        raise CheckpointError(f"cannot save checkpoint {str(path)!r}: it is a folder; give a file name such as "
                              f"{str(path / 'model.safetensors')!r}")
    if path.exists() and not path.is_file():
        raise CheckpointError(f"cannot save checkpoint {str(path)!r}: it exists and is not a regular file (a device, "
                              "pipe or socket), which saving would replace; choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except FileExistsError as exc:  # the parent (or an ancestor) is a file
        raise CheckpointError(describe_os_error(OSError(errno.ENOTDIR, "a parent of the path is a file, not a folder"),
                                                path, "checkpoint")) from exc
    except OSError as exc:
        raise CheckpointError(describe_os_error(exc, path, "checkpoint")) from exc
    tmp = temp_path(path)
    try:
        mode = _create_temp(tmp)
        write(tmp)
        try:
            os.chmod(tmp, mode)  # safetensors writes through its own 0600 temp file: give the file the usual mode
        except OSError:  # file systems without modes (FAT, some network mounts): keep what they give
            pass
        os.replace(tmp, path)
    except BaseException as exc:
        discard(tmp)
        if isinstance(exc, CheckpointError) or not isinstance(exc, Exception):
            raise
        oserr = _as_os_error(exc)
        if oserr is not None:
            raise CheckpointError(describe_os_error(oserr, path, "checkpoint") + f"; {_UNCHANGED}") from exc
        raise CheckpointError(f"cannot write checkpoint {str(path)!r}: {type(exc).__name__}: {str(exc)[:300]}; "
                              f"{_UNCHANGED}") from exc


class WholeWrites:
    """The file torch.save writes to: each write goes to the end or records the OSError (ENOSPC...) that stopped it.

    torch turns a failed write into a RuntimeError without errno ("unexpected pos"); ``error``
    keeps the real cause so the message can name it.
    """

    def __init__(self, raw):
        self._raw = raw
        self.error: Optional[OSError] = None

    def write(self, data) -> int:
        view = memoryview(data).cast("B")
        done = 0
        try:
            while done < len(view):
                n = self._raw.write(view[done:])
                if not n:
                    raise OSError(errno.EIO, "the file accepted no more bytes")
                done += n
        except OSError as exc:
            self.error = exc
            raise
        return done

    def flush(self) -> None:
        self._raw.flush()


def _create_temp(tmp: Path) -> int:
    """Create ``tmp`` (never following a planted symlink) with ``0o666`` minus the umask; returns that mode."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, 0o666)
    except FileExistsError:  # left over by a crashed save of this process id: ours to replace
        discard(tmp)
        fd = os.open(tmp, flags, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)


def _as_os_error(exc: BaseException) -> Optional[OSError]:
    """The OSError behind a writer error: itself, or the "os error N" safetensors' Rust writer reports."""
    if isinstance(exc, OSError) and exc.errno:
        return exc
    m = re.search(r"os error (\d+)", str(exc))
    if m:
        code = int(m.group(1))
        return OSError(code, os.strerror(code))
    return None
