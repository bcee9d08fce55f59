"""OrtModule: an onnxruntime session called like an eval-mode torch module (``qmodel(x) -> torch.Tensor``)."""
from __future__ import annotations

import contextlib
import shutil
import weakref
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence

import numpy as np
import torch

from ..errors import ConfigError, InputError

# onnxruntime (1.32) fuses Add + LayerNormalization into SkipLayerNormalization, whose CPU kernel measured about 5x
# slower than the unfused ops (0.4 vs 0.08 ms on 128 x 384, all-MiniLM-L6-v2's shape): leave that fusion out
DEFAULT_DISABLED_OPTIMIZERS = ("SkipLayerNormFusion",)


class OrtModule:
    """A quantized .onnx file run by onnxruntime on the CPU, with the calling convention of the float model.

    ``qmodel(x)`` / ``qmodel(a, b)`` / ``qmodel(**named)`` take torch tensors (or numpy arrays) and return a torch
    tensor (a tuple when the file has several outputs). A file with a fixed batch size runs other batch sizes in
    chunks of that size. ``path`` is the file, ``session`` the ``onnxruntime.InferenceSession``. A file written to
    a temporary folder (``quantize`` without ``path=``) lives as long as this object, then is removed.

    ``flush_denormals`` (default True) runs each call with denormal floats flushed to zero: FTZ/DAZ on the calling
    thread for the duration of the call (restored afterwards) and onnxruntime's ``session.set_denormal_as_zero`` on
    its pool threads. A masked attention's Softmax otherwise computes exp() into denormals, about 10x slower.
    ``disabled_optimizers`` are onnxruntime graph optimizers the session leaves out (default
    :data:`DEFAULT_DISABLED_OPTIMIZERS`). ``applied`` records what was used (``quantize`` adds its own steps).
    """

    def __init__(self, path, *, threads: Optional[int] = None, temp_dir: Optional[Path] = None,
                 flush_denormals: bool = True, disabled_optimizers: Optional[Sequence[str]] = None):
        import onnxruntime as ort

        self.path = Path(path)
        disabled = list(DEFAULT_DISABLED_OPTIMIZERS if disabled_optimizers is None else disabled_optimizers)
        self.flush_denormals = bool(flush_denormals) and _can_flush_denormals()
        options = ort.SessionOptions()
        options.log_severity_level = 3  # errors only: onnxruntime's warnings are not the user's business
        if threads is not None:
            options.intra_op_num_threads = int(threads)
            options.inter_op_num_threads = 1
        if self.flush_denormals:
            options.add_session_config_entry("session.set_denormal_as_zero", "1")
        was = _flushing()
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"],
                                                disabled_optimizers=disabled)
        finally:  # building a session with set_denormal_as_zero can leave the caller's thread flushing: undo that
            if _flushing() != was:
                torch.set_flush_denormal(was)
        self.applied: Dict[str, Any] = {"flush_denormals": self.flush_denormals, "disabled_optimizers": disabled}
        if flush_denormals and not self.flush_denormals:
            self.applied["flush_denormals_skipped"] = "this CPU / torch build cannot set flush-to-zero"
        self.input_names: List[str] = [i.name for i in self.session.get_inputs()]
        self.output_names: List[str] = [o.name for o in self.session.get_outputs()]
        first = [i.shape[0] for i in self.session.get_inputs() if len(i.shape) > 0]
        self.batch_size: Optional[int] = next((b for b in first if isinstance(b, int)), None)  # None: any batch
        self.training = False
        self.float_bytes: Optional[int] = None  # the float32 .onnx this was quantized from (set by quantize)
        self._cleanup = weakref.finalize(self, shutil.rmtree, str(temp_dir), True) if temp_dir else None

    @property
    def dynamic_batch(self) -> bool:
        return self.batch_size is None

    def __call__(self, *args, **kwargs) -> Any:
        feeds = self._feeds(args, kwargs)
        unbatched = bool(feeds) and all(v.ndim == r - 1 for v, r in zip(feeds.values(), self._ranks(feeds)) if r)
        if unbatched:  # one sample without its batch dimension: add it, and drop it from the outputs
            feeds = {k: v[None] for k, v in feeds.items()}
        n = next(iter(feeds.values())).shape[0] if feeds and next(iter(feeds.values())).ndim else None
        if self.batch_size is None or n is None or n == self.batch_size:
            outs = self._run(feeds)
        else:
            outs = self._run_chunked(feeds, n)
        if unbatched:
            outs = [o[0] if o.ndim else o for o in outs]
        tensors = tuple(torch.from_numpy(np.ascontiguousarray(o)) for o in outs)
        return tensors[0] if len(tensors) == 1 else tensors

    forward = __call__

    def _feeds(self, args, kwargs) -> dict:
        values = list(args)
        if len(values) == 1 and isinstance(values[0], (tuple, list)) and len(self.input_names) > 1:
            values = list(values[0])  # qmodel((a, b)) like qmodel(a, b)
        if len(values) + len(kwargs) != len(self.input_names):
            raise InputError(f"{self.path.name} takes {len(self.input_names)} inputs {self.input_names}, got "
                             f"{len(values)} positional and {sorted(kwargs)} named")
        feeds = dict(zip(self.input_names, values))
        for name, value in kwargs.items():
            if name not in self.input_names:
                raise InputError(f"{self.path.name} has no input {name!r}; its inputs are {self.input_names}")
            feeds[name] = value
        return {k: _numpy(v) for k, v in feeds.items()}

    def _run(self, feeds: dict) -> list:
        if not self.flush_denormals:
            return self.session.run(None, feeds)
        with denormals_flushed():
            return self.session.run(None, feeds)

    def _ranks(self, feeds: dict) -> list:
        ranks = {i.name: len(i.shape) for i in self.session.get_inputs()}
        return [ranks.get(k, 0) for k in feeds]

    def _run_chunked(self, feeds: dict, n: int) -> list:
        """Run a fixed-batch file on ``n`` samples: chunks of its batch size, the last one padded, then trimmed."""
        b = self.batch_size
        parts = []
        for start in range(0, n, b):
            chunk = {}
            for k, v in feeds.items():
                part = v[start:start + b]
                if len(part) < b:
                    part = np.concatenate([part, np.repeat(part[-1:], b - len(part), axis=0)])
                chunk[k] = part
            outs = self._run(chunk)
            parts.append([o[: min(b, n - start)] for o in outs])
        return [np.concatenate([p[i] for p in parts]) for i in range(len(parts[0]))]

    # module-like conveniences, so code written for the float model keeps working
    def eval(self) -> "OrtModule":
        return self

    def train(self, mode: bool = True) -> "OrtModule":
        if mode:
            raise ConfigError("an int8 onnxruntime model is inference-only; fine-tune the float model, then quantize")
        return self

    def to(self, device=None, *args, **kwargs) -> "OrtModule":
        if device is not None and torch.device(device).type != "cpu":
            raise ConfigError(f"the int8 onnxruntime model runs on the CPU only, not on {device}")
        return self

    def cpu(self) -> "OrtModule":
        return self

    def file_bytes(self) -> int:
        return self.path.stat().st_size

    def close(self) -> None:
        """Drop the session and remove a temporary file now (instead of when the object is collected)."""
        self.session = None
        if self._cleanup is not None:
            self._cleanup()

    def __repr__(self) -> str:
        return f"OrtModule({str(self.path)!r}, inputs={self.input_names}, outputs={self.output_names})"


def _flushing() -> bool:
    """Whether this thread flushes denormals now (FTZ/DAZ): a denormal float32 then comes out as zero."""
    return float(np.float32(1e-39) * np.float32(1.0)) == 0.0


def _can_flush_denormals() -> bool:
    was = _flushing()
    ok = torch.set_flush_denormal(True)  # False where the CPU has no FTZ/DAZ (then nothing was changed)
    if ok and not was:
        torch.set_flush_denormal(False)
    return bool(ok)


@contextlib.contextmanager
def denormals_flushed() -> Iterator[None]:
    """Flush denormals to zero on this thread for the block, then put the thread's setting back as it was.

    onnxruntime's ``session.set_denormal_as_zero`` covers its pool threads only, and a session with one thread runs
    everything on the caller's (creating onnxruntime's environment also clears the caller's flag)."""
    if _flushing():
        yield
        return
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(False)


def _numpy(value) -> np.ndarray:
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu()
        if value.dtype in (torch.float64, torch.float16, torch.bfloat16):
            value = value.float()  # the file takes float32, like the export
        return value.numpy()
    if isinstance(value, np.ndarray):
        return value.astype(np.float32) if value.dtype == np.float64 else value
    raise InputError(f"OrtModule inputs must be torch tensors or numpy arrays, got {type(value).__name__}")
