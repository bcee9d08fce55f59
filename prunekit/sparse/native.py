"""prunekit's own CSR kernels (``native.c``), compiled on first use with the machine's C compiler.

MKL's CSR product (torch's ``csr``) reaches well under its dense counterpart's throughput on the small batches
a deployed model sees. ``native.c`` keeps each output row's batch of accumulators in vector registers while it
walks the row's non-zeros; on this toolkit's AVX-512 CPU it measured 1.3-1.5x faster than MKL's CSR product at
batch 16 and about as fast at batch 1, and slower at batch 64 (so :func:`prunekit.sparsify` times it like any
other kernel and keeps whichever wins).

Building: the first :func:`library` call compiles ``native.c`` with ``$CC`` (else ``cc`` / ``gcc`` / ``clang``)
as ``-O3 -march=native -fopenmp-simd -std=c99 -shared -fPIC -pthread`` into the cache folder (``$PRUNEKIT_CACHE_DIR``, else
``$XDG_CACHE_HOME/prunekit``, else ``~/.cache/prunekit``) under ``kernels/``, in a file named by a digest of the
source, the compiler's version, the flags and this CPU's model and feature flags, so a copy built for another
CPU is never loaded. It takes well under a second; later calls (and processes) load the cached file. No compiler,
a failed build or ``PRUNEKIT_NATIVE_KERNELS=0`` make the kernel unavailable, with the reason in
:func:`status`: ``sparsify`` then skips the format with that reason, and a saved layer of format ``native``
runs torch's CSR kernel instead (the same numbers within float tolerance), with one warning.

Only this package's own C source is ever compiled or loaded; nothing a model file says is.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path
from typing import Optional, Tuple

import torch

SOURCE = Path(__file__).with_name("native.c")
FLAGS = ("-O3", "-march=native", "-fopenmp-simd", "-std=c99", "-shared", "-fPIC", "-pthread")
PORTABLE_FLAGS = ("-O3", "-std=c99", "-shared", "-fPIC", "-pthread")  # a compiler that rejects -march=native
ABI_VERSION = 2
BUILD_TIMEOUT_S = 120

_lock = threading.Lock()
_state: Optional[Tuple[Optional[ctypes.CDLL], str]] = None


def cache_dir() -> Path:
    """Where prunekit caches what it builds or measures on this machine."""
    if os.environ.get("PRUNEKIT_CACHE_DIR"):
        return Path(os.environ["PRUNEKIT_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "prunekit"


def _compiler() -> Optional[str]:
    cc = os.environ.get("CC")
    if cc:
        return shutil.which(cc) or cc
    for name in ("cc", "gcc", "clang"):
        found = shutil.which(name)
        if found:
            return found
    return None


def _cpu_tag() -> str:
    """The CPU's model and feature flags (what ``-march=native`` compiles for)."""
    try:
        text = Path("/proc/cpuinfo").read_text(errors="replace")
        lines = [ln for ln in text.splitlines() if ln.split(":")[0].strip() in ("model name", "flags", "Features")]
        if lines:
            return "\n".join(sorted(set(lines)))
    except OSError:
        pass
    return f"{platform.machine()} {platform.processor()}"


def _version(cc: str) -> str:
    try:
        out = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30)
        return out.stdout.splitlines()[0] if out.stdout else ""
    except (OSError, subprocess.SubprocessError):
        return ""


def _build(cc: str, target: Path) -> str:
    """Compile to ``target`` (atomically); '' or why it failed."""
    target.parent.mkdir(parents=True, exist_ok=True)
    errors = []
    for flags in (FLAGS, PORTABLE_FLAGS):
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=target.stem + ".", suffix=".tmp")
        os.close(fd)
        try:
            proc = subprocess.run([cc, *flags, str(SOURCE), "-o", tmp], capture_output=True, text=True,
                                  timeout=BUILD_TIMEOUT_S)
            if proc.returncode == 0:
                os.replace(tmp, target)
                return ""
            errors.append(" ".join((proc.stderr or proc.stdout).split())[:300])
        except (OSError, subprocess.SubprocessError) as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return f"{cc} failed: {errors[0]}"


def _load() -> Tuple[Optional[ctypes.CDLL], str]:
    if os.environ.get("PRUNEKIT_NATIVE_KERNELS", "1").strip().lower() in ("0", "false", "no", "off"):
        return None, "disabled by PRUNEKIT_NATIVE_KERNELS"
    if not SOURCE.exists():
        return None, f"its source {SOURCE} is missing from the installation"
    cc = _compiler()
    if cc is None:
        return None, "no C compiler found (set CC, or install gcc / clang)"
    digest = hashlib.sha256()
    for part in (SOURCE.read_bytes(), cc.encode(), _version(cc).encode(), " ".join(FLAGS).encode(),
                 _cpu_tag().encode(), str(ABI_VERSION).encode()):
        digest.update(part)
        digest.update(b"\0")
    target = cache_dir() / "kernels" / f"prunekit_sparse_{digest.hexdigest()[:20]}.so"
    if not target.exists():
        try:
            why = _build(cc, target)
        except OSError as exc:
            why = f"cannot write {target.parent}: {exc}"
        if why:
            return None, why
    try:
        lib = ctypes.CDLL(str(target))
        if lib.pk_abi_version() != ABI_VERSION:
            return None, f"{target} has another ABI version; delete it to rebuild"
    except (OSError, AttributeError) as exc:
        return None, f"cannot load {target}: {exc}"
    i64, ptr = ctypes.c_int64, ctypes.c_void_p
    lib.pk_csr_mm_f32.argtypes = [i64, ptr, ptr, ptr, ptr, ptr, i64, ptr, ctypes.c_int]
    lib.pk_csr_mm_f32.restype = ctypes.c_int
    return lib, str(target)


def library() -> Optional[ctypes.CDLL]:
    """The loaded kernel library (built on first call), or None when unavailable (see :func:`status`)."""
    global _state
    if _state is None:
        with _lock:
            if _state is None:
                _state = _load()
    return _state[0]


def status() -> Tuple[bool, str]:
    """``(available, where it was loaded from / why it is not)``; builds on first call."""
    lib = library()
    assert _state is not None
    return lib is not None, _state[1]


def unsupported(dtype: torch.dtype, device: torch.device, index_dtype: torch.dtype = torch.int64) -> str:
    """'' if the native kernel multiplies CSR matrices of these values / indices, else why not."""
    if dtype != torch.float32:
        return f"needs float32 (got {dtype})"
    if index_dtype != torch.int64:
        return f"needs int64 indices (got {index_dtype})"
    if torch.device(device).type != "cpu":
        return f"runs on the CPU (got {torch.device(device).type})"
    return ""


def columns(col: torch.Tensor) -> torch.Tensor:
    """The column indices as the kernel reads them: contiguous int32 (half the memory traffic of int64)."""
    return col.to(torch.int32).contiguous()


def csr_linear(lib: ctypes.CDLL, crow: torch.Tensor, col32: torch.Tensor, values: torch.Tensor,
               bias: Optional[torch.Tensor], x: torch.Tensor, threads: int) -> torch.Tensor:
    """``x @ W.T + bias`` for a 2-D float32 CPU ``x``; W by its CSR components (int64 ``crow``, ``col32`` from
    :func:`columns`, float32 ``values``), structure already validated by the caller.

    The result is the transpose of a contiguous ``(out, n)`` tensor, so a following native layer reads its
    input transposed for free.
    """
    xt = x.detach().t().contiguous()
    n = x.shape[0]
    rows = crow.numel() - 1
    out = torch.empty(rows, n, dtype=torch.float32)
    crow, values = crow.contiguous(), values.contiguous()
    b = bias.detach().contiguous() if bias is not None else None
    lib.pk_csr_mm_f32(rows, crow.data_ptr(), col32.data_ptr(), values.data_ptr(),
                      b.data_ptr() if b is not None else None, xt.data_ptr(), n, out.data_ptr(), max(1, int(threads)))
    return out.t()
