"""The sparse-kernel record a checkpoint keeps, and rebuilding the layers from it on a fresh model.

``prunekit.save`` stores ``sparse_record(model)`` in the checkpoint metadata (``"sparse_kernels"``), next
to the state dict, which holds each SparseLinear's CSR/BSR components (``crow_indices``, ``col_indices``,
``values``) and bias. ``prunekit.load`` calls :func:`restore_sparse` after the structured plan is applied
and before the state is loaded: it puts empty SparseLinear layers of the recorded format and size where the
record says, which the state dict then fills (each layer checks its CSR structure as it is filled). The
decisions applied are the saved ones, not measured again; they were right for the machine that measured
them, so run :func:`prunekit.sparsify` again on the deploy machine when it differs.

The metadata is covered by the checkpoint's metadata sha256 and the components by the per-tensor sha256s;
a forged record (checksums recomputed) is validated entry by entry and refused with CheckpointError.
"""
from __future__ import annotations

from typing import Any, Dict, Iterator, Optional, Tuple

from torch import nn

from ..errors import CheckpointError, ConfigError
from .linear import FORMATS, SparseLinear, is_dense_linear

RECORD_ATTR = "_prunekit_sparse"
RECORD_VERSION = 1


def sparse_layers(model: nn.Module) -> Iterator[Tuple[str, SparseLinear]]:
    for name, module in model.named_modules():
        if isinstance(module, SparseLinear):
            yield name, module


def sparse_record(model: nn.Module) -> Optional[Dict[str, Any]]:
    """``{"version": 1, "layers": {name: SparseLinear.record()}}`` for the model's SparseLinear layers, or None."""
    layers = {name: layer.record() for name, layer in sparse_layers(model)}
    if not layers:
        return None
    if "" in layers:
        raise CheckpointError("the model itself is a SparseLinear; save a model that holds it")
    return {"version": RECORD_VERSION, "layers": layers}


def restore_sparse(model: nn.Module, record: Any, path: Any = None) -> nn.Module:
    """Put empty :class:`SparseLinear` layers where ``record`` says (in place; returns ``model``).

    Each recorded layer must be a Linear (or SparseLinear) of the recorded size with or without bias as
    recorded; anything else raises :class:`CheckpointError` naming the layer.
    """
    if not record:
        return model
    where = f"checkpoint {str(path)!r}" if path is not None else "sparse record"

    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{where}: its sparse-kernel record {what}; load it into the architecture it was "
                               "saved from (the file may be damaged or forged)")

    if not isinstance(record, dict) or record.get("version") != RECORD_VERSION or not isinstance(record.get("layers"), dict):
        raise bad(f"is malformed (expected {{'version': {RECORD_VERSION}, 'layers': {{...}}}})")
    built = {}
    for name, entry in record["layers"].items():
        if not isinstance(name, str) or not name or not isinstance(entry, dict):
            raise bad(f"has a malformed entry {name!r}")
        try:
            module = model.get_submodule(name)
        except AttributeError:
            raise bad(f"names layer {name!r}, which the model lacks") from None
        if not (is_dense_linear(module) or isinstance(module, SparseLinear)):
            raise bad(f"names layer {name!r}, a {type(module).__name__}, not a Linear")
        fmt, nnz, blocksize, bias = entry.get("format"), entry.get("nnz"), entry.get("blocksize"), entry.get("bias")
        shape = (entry.get("out_features"), entry.get("in_features"))
        if fmt not in FORMATS:
            raise bad(f"gives layer {name!r} the unknown format {fmt!r}")
        if shape != (module.out_features, module.in_features):
            raise bad(f"gives layer {name!r} the shape {shape}, the model's is "
                      f"{(module.out_features, module.in_features)}")
        if not isinstance(bias, bool) or bias != (module.bias is not None):
            raise bad(f"says layer {name!r} has bias={bias!r}, the model's layer has bias={module.bias is not None}")
        limit = shape[0] * shape[1]
        if isinstance(nnz, bool) or not isinstance(nnz, int) or not 0 <= nnz <= limit:
            raise bad(f"gives layer {name!r} nnz={nnz!r}, outside 0..{limit}")
        if (fmt == "bsr") != (blocksize is not None):
            raise bad(f"gives layer {name!r} blocksize={blocksize!r} with format {fmt!r}")
        ref = module.values if isinstance(module, SparseLinear) else module.weight
        try:
            built[name] = SparseLinear(shape[1], shape[0], bias, format=fmt, nnz=nnz, blocksize=blocksize,
                                       dtype=ref.dtype, device=ref.device)
        except ConfigError as exc:
            raise bad(f"does not fit layer {name!r} ({exc})") from None
    for name, layer in built.items():
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer)
    setattr(model, RECORD_ATTR, {n: m.record() for n, m in sparse_layers(model)})
    return model


def densify(model: nn.Module) -> nn.Module:
    """Every SparseLinear back to an equivalent ``nn.Linear`` (in place; returns ``model``), e.g. for export."""
    for name, layer in list(sparse_layers(model)):
        if not name:
            raise ConfigError("the model itself is a SparseLinear: call model.to_linear()")
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent) if parent else model, child, layer.to_linear())
    if hasattr(model, RECORD_ATTR):
        delattr(model, RECORD_ATTR)
    return model
