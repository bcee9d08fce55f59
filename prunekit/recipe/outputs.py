"""A run's output folder: checked before any work, locked against a second run, filled stage by stage."""
from __future__ import annotations

import json
import logging
import os
import socket
import time
from pathlib import Path
from typing import Optional

from ..errors import OutputError
from ..io.atomic import describe_os_error

log = logging.getLogger(__name__)

LOCK_FILE = ".prunekit.lock"
STAGE_DIR = "stages"  # one checkpoint per finished stage: stages/<NN>-<stage>.safetensors


def prepare_output(out_dir: Path) -> Path:
    """Create ``out_dir`` and prove it writable, before data is loaded or anything is trained.

    Raises :class:`OutputError` when the path is a file, cannot be created, or refuses a write.
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"output path {str(out_dir)!r} is a file, not a folder; choose another output "
                          "(recipe key 'output' or -o/--output)")
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(describe_os_error(exc, out_dir, "output folder")) from exc
    probe = out_dir / f".prunekit-write-test.{os.getpid()}"
    try:
        probe.write_bytes(b"ok")
    except OSError as exc:
        raise OutputError(describe_os_error(exc, out_dir, "into output folder")) from exc
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return out_dir


class RunLock:
    """``out_dir/.prunekit.lock`` naming the run's pid and host while it runs; a second run refuses to start.

    A lock left by a process that no longer exists (same host) is taken over with a warning.
    ``overwrite=True`` takes any lock (the user says the other run is gone or may be clobbered).
    """

    def __init__(self, out_dir: Path, *, overwrite: bool = False):
        self.path = Path(out_dir) / LOCK_FILE
        self.overwrite = overwrite
        self.held = False

    def acquire(self) -> "RunLock":
        info = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
            except FileExistsError:
                self._handle_existing()
                continue
            except OSError as exc:
                raise OutputError(describe_os_error(exc, self.path, "lock file")) from exc
            with os.fdopen(fd, "w") as f:
                json.dump(info, f)
            self.held = True
            return self
        raise OutputError(f"cannot take the lock {str(self.path)!r}: another run keeps creating it")

    def _handle_existing(self) -> None:
        other = read_lock(self.path)
        alive = other is not None and _alive(other)
        if alive and not self.overwrite:
            raise OutputError(
                f"output folder {str(self.path.parent)!r} is in use by another prunekit run (pid {other.get('pid')} "
                f"on {other.get('host')}, started {other.get('started')}); wait for it, choose another output "
                f"(-o/--output), or pass --overwrite if that run is gone")
        if alive:
            log.warning("taking over the lock of run pid %s (--overwrite)", other.get("pid"))
        else:
            log.warning("removing a stale lock %s left by a run that no longer exists (%s)", self.path, other)
        try:
            self.path.unlink()
        except FileNotFoundError:
            pass

    def release(self) -> None:
        if self.held:
            self.held = False
            try:
                self.path.unlink()
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_lock(path: Path) -> Optional[dict]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else None
    except (OSError, ValueError):
        return None


def _alive(info: dict) -> bool:
    """Whether the process that wrote the lock still runs (unknown hosts count as alive: never steal blindly)."""
    if info.get("host") != socket.gethostname():
        return True
    try:
        pid = int(info.get("pid"))
    except (TypeError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def stage_checkpoint_path(out_dir: Path, index: int, key: str) -> Path:
    return Path(out_dir) / STAGE_DIR / f"{index:02d}-{key}.safetensors"

