"""``SparseLinear``: ``y = x W^T + b`` with ``W`` stored sparse (CSR or BSR components as buffers).

The weight lives in three buffers, ``crow_indices``, ``col_indices`` and ``values`` (safetensors and
torch's weights-only files cannot store sparse tensors, so the components are what the state dict holds),
plus the dense ``bias``. The kernel object (a ``torch.sparse_csr`` / ``sparse_bsr`` tensor, or a
``scipy.sparse.csr_matrix``) is built from them on first use and cached; it shares their memory and is
rebuilt when a buffer is replaced or changed in place (``load_state_dict``, ``.to()``).

Kernels (``format``):

* ``"csr"``: torch CSR (MKL on CPU). ``y = (W @ x^T)^T + b`` with ``x^T`` made contiguous, which measured
  fastest among ``torch.sparse.mm`` / ``torch.mm`` / ``torch.addmm`` on this toolkit's CPU; a single row
  uses ``torch.mv``, which measured about twice as fast as the matrix product there.
* ``"bsr"``: torch BSR with ``blocksize`` (rows, cols); only worth it for block-structured sparsity.
* ``"scipy"``: ``scipy.sparse.csr_matrix`` on the same buffers (single-threaded, CPU, float32/float64).
  When gradients must flow to the input, or the tensors are not on the CPU, it computes with the torch CSR
  kernel instead (same numbers).
* ``"native"``: prunekit's own C kernel (:mod:`prunekit.sparse.native`, compiled on first use), float32 on the
  CPU, threaded over output rows with ``torch.get_num_threads()`` threads. Where it cannot run (no compiler,
  gradients needed, another dtype or device) it computes with the torch CSR kernel (same numbers).

Inference only: the weights are buffers and never train. Gradients do flow to the input for ``csr`` and
``scipy`` (``bsr`` has no backward in torch on CPU). The layer is a leaf for prunekit's graph capture.
ONNX / TorchScript exporters do not handle sparse tensors: :func:`prunekit.sparse.densify` turns the layers
back into ``nn.Linear`` for export.
"""
from __future__ import annotations

import contextlib
import warnings
from typing import Any, Dict, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import CheckpointError, ConfigError
from . import native

FORMATS: Tuple[str, ...] = ("csr", "bsr", "scipy", "native")
SCIPY_DTYPES = (torch.float32, torch.float64)


def is_dense_linear(module: nn.Module) -> bool:
    """A plain ``nn.Linear`` (or a subclass that keeps Linear's forward), which SparseLinear can replace exactly."""
    return isinstance(module, nn.Linear) and type(module).forward is nn.Linear.forward


def _blocksize(blocksize: Any) -> Tuple[int, int]:
    if isinstance(blocksize, int) and not isinstance(blocksize, bool):
        blocksize = (blocksize, blocksize)
    try:
        r, c = (int(v) for v in blocksize)
        ok = all(isinstance(v, int) and not isinstance(v, bool) for v in blocksize) and r > 0 and c > 0
    except (TypeError, ValueError):
        ok = False
    if not ok:
        raise ConfigError(f"blocksize must be a positive int or a (rows, cols) pair of positive ints, got {blocksize!r}")
    return r, c


_native_warned = False


def _warn_native_once() -> None:
    global _native_warned
    if not _native_warned:
        _native_warned = True
        warnings.warn(f"prunekit's native sparse kernel is unavailable ({native.status()[1]}); SparseLinear layers "
                      "of format 'native' run torch's CSR kernel instead (same results, other speed)", RuntimeWarning,
                      stacklevel=3)


@contextlib.contextmanager
def _quiet():
    """Silence torch's "sparse CSR tensor support is in beta" warning while a kernel is built."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse (CSR|BSR|CSC|BSC) tensor support is in beta")
        yield


class SparseLinear(nn.Module):
    """A Linear layer whose weight is stored and multiplied sparse; see the module docstring.

    Build one with :meth:`from_linear` / :meth:`from_dense`; the constructor makes an empty shell of the
    right buffer shapes (``nnz`` stored entries of ``col_indices``: non-zeros for csr/scipy, blocks for bsr)
    that ``load_state_dict`` fills, which is how :func:`prunekit.load` rebuilds it.
    """

    prunekit_leaf = True  # graph capture keeps it whole (like InputSelectedLinear)

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, format: str = "csr", nnz: int = 0,
                 blocksize: Optional[Any] = None, dtype: Optional[torch.dtype] = None, device=None):
        super().__init__()
        if format not in FORMATS:
            raise ConfigError(f"SparseLinear format {format!r} is unknown; use one of {', '.join(FORMATS)}")
        self.in_features, self.out_features, self.format = int(in_features), int(out_features), format
        self.blocksize: Optional[Tuple[int, int]] = None
        rows, value_shape = self.out_features, (int(nnz),)
        if format == "bsr":
            if blocksize is None:
                raise ConfigError("SparseLinear format 'bsr' needs a blocksize")
            br, bc = self.blocksize = _blocksize(blocksize)
            if self.out_features % br or self.in_features % bc:
                raise ConfigError(f"blocksize {(br, bc)} does not divide the weight shape "
                                  f"({self.out_features}, {self.in_features})")
            rows, value_shape = self.out_features // br, (int(nnz), br, bc)
        dtype = dtype or torch.get_default_dtype()
        self.register_buffer("crow_indices", torch.zeros(rows + 1, dtype=torch.long, device=device))
        self.register_buffer("col_indices", torch.zeros(int(nnz), dtype=torch.long, device=device))
        self.register_buffer("values", torch.zeros(value_shape, dtype=dtype, device=device))
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.out_features, dtype=dtype, device=device), requires_grad=False)
        else:
            self.register_parameter("bias", None)
        self._kernel_cache: Optional[Tuple[tuple, Any]] = None

    # --- building ---

    @classmethod
    def from_dense(cls, weight: torch.Tensor, bias: Optional[torch.Tensor] = None, *, format: str = "csr",
                   blocksize: Optional[Any] = None) -> "SparseLinear":
        """The layer computing ``x @ weight.T + bias`` (zeros of ``weight`` are not stored)."""
        weight = weight.detach()
        if weight.dim() != 2:
            raise ConfigError(f"SparseLinear needs a 2-D weight, got shape {tuple(weight.shape)}")
        out_f, in_f = weight.shape
        if format not in FORMATS:
            raise ConfigError(f"SparseLinear format {format!r} is unknown; use one of {', '.join(FORMATS)}")
        with _quiet():
            sp = weight.to_sparse_bsr(_blocksize(blocksize)) if format == "bsr" else weight.to_sparse_csr()
        col = sp.col_indices()
        layer = cls(in_f, out_f, bias is not None, format=format, nnz=col.numel(), blocksize=blocksize,
                    dtype=weight.dtype, device=weight.device)
        with torch.no_grad():
            layer.crow_indices.copy_(sp.crow_indices())
            layer.col_indices.copy_(col)
            layer.values.copy_(sp.values())
            if bias is not None:
                layer.bias.copy_(bias.detach())
        return layer

    @classmethod
    def from_linear(cls, linear: nn.Linear, *, format: str = "csr", blocksize: Optional[Any] = None) -> "SparseLinear":
        return cls.from_dense(linear.weight, linear.bias, format=format, blocksize=blocksize)

    def dense_weight(self) -> torch.Tensor:
        """The weight as a dense ``(out_features, in_features)`` tensor."""
        return self._torch_kernel().to_dense()

    def prunekit_dense_equivalent(self) -> nn.Linear:
        """What ``prunekit.measure`` counts this layer as (its parameters, non-zeros and MACs): the dense Linear."""
        return self.to_linear()

    def to_linear(self) -> nn.Linear:
        """An equivalent ``nn.Linear`` (for export, or to train again)."""
        w = self.dense_weight()
        out = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, dtype=w.dtype, device=w.device)
        with torch.no_grad():
            out.weight.copy_(w)
            if self.bias is not None:
                out.bias.copy_(self.bias)
        return out

    # --- reading ---

    @property
    def nnz(self) -> int:
        """Stored weight entries (for bsr: every entry of every stored block, zeros inside blocks included)."""
        return self.values.numel()

    @property
    def sparsity(self) -> float:
        total = self.in_features * self.out_features
        return 1.0 - self.nnz / total if total else 0.0

    def record(self) -> Dict[str, Any]:
        """What :func:`prunekit.load` needs to rebuild the empty layer (JSON data)."""
        return {"format": self.format, "in_features": self.in_features, "out_features": self.out_features,
                "nnz": self.col_indices.numel(), "blocksize": list(self.blocksize) if self.blocksize else None,
                "bias": self.bias is not None}

    def extra_repr(self) -> str:
        extra = f", blocksize={self.blocksize}" if self.blocksize else ""
        return (f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}, "
                f"format={self.format!r}{extra}, sparsity={self.sparsity:.3f}")

    # --- the kernels ---

    def _key(self) -> tuple:
        parts = []
        for t in (self.crow_indices, self.col_indices, self.values):
            try:
                version = t._version
            except RuntimeError:  # inference tensors have no version counter (and cannot change in place)
                version = -1
            parts.append((t.data_ptr(), version, t.dtype, t.device, tuple(t.shape)))
        return tuple(parts)

    def _cached(self, kind: str, build):
        key = (kind,) + self._key()
        cache = self.__dict__.get("_kernel_cache") or {}
        if not isinstance(cache, dict) or cache.get(kind, (None,))[0] != key:
            cache = dict(cache) if isinstance(cache, dict) else {}
            cache[kind] = (key, build())
            self._kernel_cache = cache
        return cache[kind][1]

    def _torch_kernel(self) -> torch.Tensor:
        def build():
            size = (self.out_features, self.in_features)
            parts = (self.crow_indices, self.col_indices, self.values)
            maker = torch.sparse_bsr_tensor if self.format == "bsr" else torch.sparse_csr_tensor
            if any(t.is_inference() for t in parts):
                with _quiet():
                    return maker(*parts, size=size, check_invariants=False)
            with torch.inference_mode(False), _quiet():  # a normal tensor: usable outside inference mode and in backward
                return maker(*parts, size=size, check_invariants=False)
        return self._cached("torch", build)

    def _scipy_kernel(self):
        def build():
            import scipy.sparse

            return scipy.sparse.csr_matrix((self.values.numpy(), self.col_indices.numpy(), self.crow_indices.numpy()),
                                           shape=(self.out_features, self.in_features))
        return self._cached("scipy", build)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        n = x2.shape[0]
        if n == 0:
            return F.linear(x, torch.zeros(self.out_features, self.in_features, dtype=x.dtype, device=x.device), self.bias)
        grad = torch.is_grad_enabled() and x.requires_grad
        if self.format == "native" and not grad:
            lib = self._native_library(x2)
            if lib is not None:
                col32 = self._cached("native", lambda: native.columns(self.col_indices))
                y = native.csr_linear(lib, self.crow_indices, col32, self.values, self.bias, x2,
                                      torch.get_num_threads())
                return y.reshape(*lead, self.out_features)
        if (self.format == "scipy" and not grad and x2.device.type == "cpu" and x2.dtype == self.values.dtype
                and x2.dtype in SCIPY_DTYPES):
            S = self._scipy_kernel()
            xn = x2.detach().numpy()
            y = torch.from_numpy(S @ xn[0]).unsqueeze(0) if n == 1 else torch.from_numpy(S @ xn.T).t()
        elif self.format != "bsr" and n == 1:
            y = torch.mv(self._torch_kernel(), x2[0]).unsqueeze(0)
        else:
            y = torch.sparse.mm(self._torch_kernel(), x2.t().contiguous()).t()
        if self.bias is not None:
            y = y + self.bias
        return y.reshape(*lead, self.out_features)

    def _native_library(self, x: torch.Tensor):
        """The native kernel library if it can run this call, else None (once per process: a warning why)."""
        if (x.dtype != self.values.dtype or self.col_indices.dtype != self.crow_indices.dtype
                or native.unsupported(self.values.dtype, self.values.device, self.crow_indices.dtype)):
            return None
        lib = native.library()
        if lib is None:
            _warn_native_once()
        return lib

    # --- state ---

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)
        if all(prefix + k in state_dict for k in ("crow_indices", "col_indices", "values")):
            self.check_structure(prefix.rstrip("."))

    def check_structure(self, name: str = "") -> None:
        """Raise CheckpointError unless the buffers form a valid CSR/BSR matrix of the layer's shape.

        The kernels skip torch's invariant checks for speed, so indices out of range would read out of
        bounds: a loaded (possibly forged) layer is checked once here, when its buffers are filled.
        """
        where = f"sparse layer {name!r}" if name else "sparse layer"
        crow, col, values = self.crow_indices, self.col_indices, self.values
        if crow.dtype not in (torch.int32, torch.int64) or col.dtype != crow.dtype or not values.is_floating_point():
            raise CheckpointError(f"{where}: its index buffers must be int32/int64 and its values floating point "
                                  f"(got {crow.dtype}, {col.dtype}, {values.dtype}); the file is damaged")
        maker = torch.sparse_bsr_tensor if self.format == "bsr" else torch.sparse_csr_tensor
        try:
            with torch.inference_mode(False), _quiet():
                maker(crow, col, values, size=(self.out_features, self.in_features), check_invariants=True)
        except (RuntimeError, ValueError, TypeError, IndexError) as exc:
            raise CheckpointError(f"{where}: its {self.format} structure (crow_indices, col_indices, values) is "
                                  f"invalid ({' '.join(str(exc).split())[:200]}); the file is damaged or forged") from None
        self._kernel_cache = None

    def __getstate__(self):
        state = self.__dict__.copy()
        state["_kernel_cache"] = None  # kernels are rebuilt from the buffers (deepcopy, pickling)
        return state
