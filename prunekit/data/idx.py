"""IDX files (the MNIST / Fashion-MNIST format): read, write, and find the four standard files in a folder."""
from __future__ import annotations

import gzip
import re
from pathlib import Path
from typing import Dict

import numpy as np

from ..errors import InputError

# type code (third magic byte) -> big-endian numpy dtype
IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CODES = {np.dtype(v).newbyteorder("=").str: k for k, v in IDX_DTYPES.items()}

# standard names: train-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz] (also "." separators, "test" for "t10k")
PATTERNS = {
    "x_train": r"train[-_.]images[-_.]idx3[-_.]ubyte",
    "y_train": r"train[-_.]labels[-_.]idx1[-_.]ubyte",
    "x_test": r"(t10k|test)[-_.]images[-_.]idx3[-_.]ubyte",
    "y_test": r"(t10k|test)[-_.]labels[-_.]idx1[-_.]ubyte",
}


def read_idx(path: str | Path) -> np.ndarray:
    """Parse an IDX file (optionally gzipped): magic ``0 0 type ndim``, big-endian int32 dims, then the data."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"IDX file {str(path)!r} does not exist; check data.path / data.files")
    try:
        raw = gzip.decompress(path.read_bytes()) if _is_gzip(path) else path.read_bytes()
    except (OSError, EOFError) as exc:
        raise InputError(f"IDX file {str(path)!r} is not a readable gzip file ({exc}); re-download or unpack it") from exc
    return parse_idx(raw, str(path))


def parse_idx(raw: bytes, where: str = "<bytes>") -> np.ndarray:
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in IDX_DTYPES:
        raise InputError(
            f"{where!r} is not an IDX file: its magic number {raw[:4].hex() or '(empty)'} should be 0000TTNN "
            f"with type TT in {sorted(hex(k) for k in IDX_DTYPES)}; is it the right (unpacked or .gz) file?"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise InputError(f"IDX file {where!r} is truncated: its header announces {ndim} dimensions but ends early")
    dims = tuple(int(d) for d in np.frombuffer(raw, ">i4", count=ndim, offset=4))
    dtype = np.dtype(IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims)) * dtype.itemsize
    if len(raw) != expected:
        state = "truncated" if len(raw) < expected else "longer than its header says"
        raise InputError(
            f"IDX file {where!r} is {state}: shape {dims} of {dtype.name} needs {expected} bytes, found {len(raw)}; "
            "re-download the file"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> Path:
    """Write ``array`` as IDX (gzipped when the name ends in .gz); the inverse of :func:`read_idx`."""
    array = np.asarray(array)
    code = CODES.get(array.dtype.newbyteorder("=").str)
    if code is None:
        raise InputError(f"IDX cannot store dtype {array.dtype}; use one of uint8, int8, int16, int32, float32, float64")
    body = bytes([0, 0, code, array.ndim]) + np.asarray(array.shape, ">i4").tobytes()
    body += array.astype(IDX_DTYPES[code]).tobytes()
    path = Path(path)
    path.write_bytes(gzip.compress(body) if path.suffix == ".gz" else body)
    return path


def find_idx_files(folder: str | Path) -> Dict[str, Path]:
    """The train/test image and label files in ``folder`` (``x_test``/``y_test`` only when both exist)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"IDX folder {str(folder)!r} does not exist; set data.path to the folder with the *-idx*-ubyte[.gz] files")
    names = sorted(p.name for p in folder.iterdir() if p.is_file())
    found: Dict[str, Path] = {}
    for key, pattern in PATTERNS.items():
        hits = [n for n in names if re.fullmatch(pattern + r"(\.gz)?", n)]
        if hits:
            found[key] = folder / hits[0]
    missing = [k for k in ("x_train", "y_train") if k not in found]
    if missing:
        raise InputError(
            f"IDX folder {str(folder)!r} has no {' / '.join(missing)} file (expected names like "
            f"train-images-idx3-ubyte.gz and train-labels-idx1-ubyte.gz; found: {', '.join(names) or 'nothing'}); "
            "pass data.files to name them explicitly"
        )
    if ("x_test" in found) != ("y_test" in found):
        have, lack = ("x_test", "y_test") if "x_test" in found else ("y_test", "x_test")
        raise InputError(
            f"IDX folder {str(folder)!r} has the {have} file {found[have].name!r} but no {lack} file; "
            "add the matching file or remove it to carve the test split from the training data"
        )
    return found


def _is_gzip(path: Path) -> bool:
    with path.open("rb") as fh:
        return fh.read(2) == b"\x1f\x8b"
