"""Checkpoints: safetensors (or weights-only torch files) + JSON metadata; loading never unpickles or imports code.

Layout (format version 2): the tensors of :func:`prunekit.measure.storage.encode_state` (0/1
masks as 1-bit bitmaps, pruned weights stored as +0.0, tied tensors once, optionally the
sparse bitmap + values encoding) and a JSON metadata string (architecture spec, structured
plan, masked parameter names, the state dict's per-module versions, user metadata and a
sha256 of every stored tensor), itself covered by a sha256 stored next to it.

This module is the public flow (:func:`save`, :func:`read_checkpoint`, :func:`load`) and the
two file containers; the steps live next to it: ``integrity`` (checksums, format/version
checks), ``architecture`` (which model to build), ``restore`` (fitting state into the model)
and ``writing`` (the safe file write).
"""
from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Tuple, Union

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, PruningError
from ..measure.storage import decode_state, encode_state
from ..unstructured.masks import attach_refresh_hooks, masked_modules, refresh_masked
from ..sparse.record import restore_sparse, sparse_record
from .architecture import build_architecture
from .atomic import PathLike
from .integrity import (FORMAT_VERSION, READABLE_VERSIONS, malformed_entry, metadata_sha256, parse_metadata,
                        tensor_sha256, verify_tensors)
from .restore import check_compatible, install_masks, state_metadata, with_state_metadata
from .writing import WholeWrites, write_checkpoint_file

__all__ = ["save", "read_checkpoint", "load", "tensor_sha256", "FORMAT_VERSION", "READABLE_VERSIONS",
           "META_KEY", "DIGEST_KEY", "ST_META", "ST_DIGEST"]

log = logging.getLogger(__name__)

META_KEY = "__prunekit_metadata__"  # torch-file variant: the metadata JSON under this key...
DIGEST_KEY = "__prunekit_metadata_sha256__"  # ...and its sha256 under this one
ST_META, ST_DIGEST = "prunekit", "prunekit.sha256"  # the same two strings in safetensors' header metadata


def save(model: nn.Module, path: PathLike, *, sparse: bool = False,
         metadata: Optional[Dict[str, Any]] = None, model_spec: Optional[Dict[str, Any]] = None,
         codec: Optional[str] = "safetensors", bits: Any = None) -> Path:
    """Write ``model``'s weights, masks and pruning plan to ``path``; returns the path.

    ``.safetensors`` (default) or ``.pt``/``.pth``/``.bin`` (a weights-only torch file). Masked
    weights are stored as their effective values (+0.0 where pruned; a pruned weight never
    revives) and 0/1 masks as nothing more than a marker when the mask is "weight != 0", else
    as 1-bit bitmaps, so the file is about the size of the model's effective weights;
    ``sparse=True`` also stores mostly-zero tensors as bitmap + values. Loading restores
    masks and effective weights exactly. :func:`prunekit.measure.storage.checkpoint_nbytes`
    gives the size on disk minus the JSON metadata header.

    ``model_spec`` (``{"name": ..., "kwargs": {...}}``, default: the spec the model was built
    from) lets :func:`load` rebuild the architecture without being handed one; only names
    registered in ``prunekit.models.MODELS`` are rebuilt without ``trust_model_spec=True``.

    ``codec="deep"`` writes a Deep-Compression file instead (:mod:`prunekit.compress`: weights
    shared at ``bits`` per layer, positions and indices entropy-coded; ``bits`` as in
    :func:`prunekit.compress.share_weights`, default: what share_weights recorded, else 8 bits
    for convolutions and 5 for Linear layers); :func:`load` recognises it by its magic.

    Integrity: every stored tensor gets a sha256, and the metadata (spec, plan, masks,
    checksums) a sha256 of its own; :func:`load` verifies both (files from before checksums,
    format 1, still load, with a logged warning). The file is written to a
    temporary sibling and renamed, so a failed write (disk full, read-only folder...) raises
    :class:`CheckpointError` and leaves no partial file; an older file at ``path`` stays as it
    was. New files get the usual permissions (``0o666`` minus the umask).
    """
    path = Path(path)
    if _deep_codec(codec, bits, sparse):  # codec="deep": prunekit.compress writes the Deep-Compression file
        from ..compress.file import encode_deep

        record = sparse_record(model)  # SparseLinear layers, rebuilt by load as for safetensors
        data = encode_deep(model, bits, metadata=metadata, model_spec=model_spec,
                           extra={"sparse_kernels": record} if record else None)
        write_checkpoint_file(path, lambda tmp: _write_bytes(tmp, data))
        return path
    masked = sorted(f"{mod}.{p}" if mod else p for mod, _, p in masked_modules(model))
    state = model.state_dict()
    tensors, aliases = encode_state(state, sparse=sparse, masked=masked)
    if META_KEY in tensors or DIGEST_KEY in tensors:
        raise CheckpointError(f"the model has a tensor named {META_KEY!r} or {DIGEST_KEY!r}, which prunekit reserves; rename it")
    meta = {
        "format": "prunekit", "version": FORMAT_VERSION, "sparse": bool(sparse),
        "masked": masked, "plan": getattr(model, "_prunekit_plan", None) or None,
        "model_spec": model_spec or getattr(model, "_prunekit_spec", None),
        "user": metadata or {}, "aliases": aliases, "state_metadata": state_metadata(state),
        "sparse_kernels": sparse_record(model),  # SparseLinear layers (prunekit.sparsify) to rebuild on load
        "sha256": {k: tensor_sha256(v) for k, v in tensors.items()},
    }
    try:
        text = json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"cannot save checkpoint {str(path)!r}: metadata and model_spec must be JSON data "
            f"(dicts, lists, strings, numbers): {exc}"
        ) from exc
    digest = metadata_sha256(text)
    # the container writers stay here, next to the payload they write (``open`` is looked up in this module)
    if _is_torch_file(path):
        def write(tmp: Path) -> None:
            with open(tmp, "wb", buffering=0) as f:
                out = WholeWrites(f)
                try:
                    torch.save({**tensors, META_KEY: text, DIGEST_KEY: digest}, out)
                except RuntimeError:
                    if out.error is not None:  # torch reports a failed write as "unexpected pos": give its OSError
                        raise out.error from None
                    raise
    else:
        def write(tmp: Path) -> None:
            from safetensors.torch import save_file

            save_file(tensors, str(tmp), metadata={ST_META: text, ST_DIGEST: digest})
    write_checkpoint_file(path, write)
    return path


def read_checkpoint(path: PathLike) -> Tuple[Dict[str, torch.Tensor], dict]:
    """``(state_dict, metadata)`` of a checkpoint: checksums verified, masks and sparse tensors decoded.

    The state dict carries the saved per-module versions (``state_dict._metadata``). A file
    without prunekit metadata (a plain ``model.state_dict()`` file) gives ``metadata == {}``.
    Files without checksums (format 1, written by prunekit before checksums existed, and plain
    state-dict files) are read, with a logged warning that corruption cannot be detected; a
    format-2 file missing them is refused. Unknown formats and versions are refused.
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} is a folder, not a file; give the checkpoint file inside it "
                              "(e.g. model.safetensors)")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist")
    from ..compress.deep_read import read_deep
    from ..compress.file import is_deep_file

    if is_deep_file(path):  # a Deep-Compression file (prunekit.save(..., codec="deep")), recognised by its magic
        state, meta = read_deep(path)
        return with_state_metadata(state, meta.get("state_metadata"), path), meta
    tensors, text, digest = _read_raw(path)
    if text is None:
        log.warning("%s has no prunekit metadata: loading it as a plain state dict without checksums "
                    "(corruption cannot be detected)", path)
        return tensors, {}
    meta = parse_metadata(text, digest, path)
    if meta["version"] == FORMAT_VERSION:
        verify_tensors(tensors, meta.get("sha256"), path)
    else:
        log.warning("%s was written by an older prunekit (checkpoint format %s) without checksums: it is loaded, but "
                    "corruption cannot be detected; save it again with prunekit.save to add them", path, meta["version"])
    aliases = meta.get("aliases") or {}
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise malformed_entry(path, "aliases")
    state = decode_state(tensors, sparse=bool(meta.get("sparse")), aliases=aliases)
    return with_state_metadata(state, meta.get("state_metadata"), path), meta


def load(path: PathLike, model: Union[nn.Module, str, Callable[[], nn.Module], None] = None,
         *, strict: bool = True, trust_model_spec: bool = False) -> nn.Module:
    """Rebuild a saved model: architecture (given, or from the saved spec) -> pruning plan -> masks -> weights.

    ``model``: an instance (copied, never modified), a registered name or a factory you
    supply. Without it the file's ``model_spec`` is used, but only if it names a model
    registered in ``prunekit.models.MODELS`` (prunekit's own, or one you registered with
    ``@prunekit.models.register_model`` before loading). Any other ``"module:function"`` is
    refused with :class:`CheckpointError` before anything is imported, because a forged file
    could name any function; ``trust_model_spec=True`` imports and calls it (only for files
    you trust).

    Checksums are verified first: a changed tensor or metadata byte raises :class:`CheckpointError`
    naming it. Files without checksums (format 1 from older prunekit, plain state-dict files)
    load with a logged warning; a format-2 file without them, an unknown format or a newer
    version is refused. Nothing is returned unless everything fits: a plan or mask naming a layer the model lacks, a keep
    index out of range and shape mismatches raise :class:`CheckpointError` naming the layer.
    """
    state, meta = read_checkpoint(path)
    model = build_architecture(model, meta, path, trust_model_spec)
    plan = meta.get("plan")
    if plan:
        from ..structured import apply_plan

        try:
            model = apply_plan(model, plan)
        except CheckpointError as exc:
            raise CheckpointError(f"checkpoint {str(path)!r}: {exc}") from exc
        except (PruningError, AttributeError, IndexError, KeyError, TypeError, ValueError, RuntimeError) as exc:
            raise CheckpointError(
                f"checkpoint {str(path)!r}: its structured pruning plan does not fit this model "
                f"({type(exc).__name__}: {exc}); load it into the architecture it was saved from"
            ) from exc
    restore_sparse(model, meta.get("sparse_kernels"), path)  # empty SparseLinear layers the state dict fills
    install_masks(model, meta.get("masked") or [], path)
    attach_refresh_hooks(model)  # masks read functionally by a parent (nn.MultiheadAttention.out_proj) hold too
    check_compatible(model, state, strict, path)
    model.load_state_dict(state, strict=strict)
    refresh_masked(model)  # module.weight = weight_orig * weight_mask from the loaded tensors, before any forward
    if meta.get("model_spec"):
        model._prunekit_spec = meta["model_spec"]
    return model.eval()


CODECS = ("safetensors", "deep")  # save(codec=...): the standard checkpoint (.safetensors / .pt by suffix), Deep Compression


def _deep_codec(codec: Optional[str], bits: Any, sparse: bool) -> bool:
    """Whether ``save`` writes a Deep-Compression file; ConfigError for an unknown codec or options it does not take."""
    if codec is not None and codec not in CODECS:
        raise ConfigError(f"unknown checkpoint codec {codec!r}; choose one of {', '.join(map(repr, CODECS))} (None: safetensors)")
    if codec != "deep":
        if bits is not None:
            raise ConfigError(f"bits= (weight-sharing widths) needs codec='deep', got codec={codec!r}")
        return False
    if sparse:
        raise ConfigError("sparse=True does not apply to codec='deep' (a Deep-Compression file stores kept weights only)")
    return True


def _write_bytes(tmp: Path, data: bytes) -> None:
    with open(tmp, "wb", buffering=0) as f:
        WholeWrites(f).write(data)


# --- the two containers ---

def _is_torch_file(path: Path) -> bool:
    return path.suffix in (".pt", ".pth", ".bin")


def _read_raw(path: Path) -> Tuple[Dict[str, torch.Tensor], Optional[str], Optional[str]]:
    """``(stored tensors, metadata JSON or None, its sha256 or None)``; reader errors become CheckpointError."""
    try:
        if _is_torch_file(path):
            raw = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(raw, dict):
                raise CheckpointError(f"{str(path)!r} does not hold a state dict (got {type(raw).__name__}); "
                                      "save model.state_dict() or use prunekit.save")
            text, digest = raw.pop(META_KEY, None), raw.pop(DIGEST_KEY, None)
            tensors = raw
        else:
            from safetensors import safe_open

            with safe_open(str(path), framework="pt") as f:
                header = f.metadata() or {}
                text, digest = header.get(ST_META), header.get(ST_DIGEST)
                tensors = {k: f.get_tensor(k) for k in f.keys()}
    except CheckpointError:
        raise
    except Exception as exc:  # truncated / corrupt / not a checkpoint: every reader error ends here
        raise CheckpointError(
            f"cannot read checkpoint {str(path)!r}: it is truncated, corrupt or not a safetensors/torch weights file "
            f"({type(exc).__name__}: {str(exc)[:300]}). A whole pickled model (torch.save(model)) is refused because "
            "loading it would execute code: save model.state_dict() or use prunekit.save."
        ) from exc
    odd = [k for k, v in tensors.items() if not isinstance(k, str) or not isinstance(v, torch.Tensor)]
    if odd:
        raise CheckpointError(f"{str(path)!r} holds {odd[0]!r}, which is not a named tensor; a checkpoint holds only a "
                              "state dict: save model.state_dict() or use prunekit.save")
    if (text is not None and not isinstance(text, str)) or (digest is not None and not isinstance(digest, str)):
        raise CheckpointError(f"checkpoint {str(path)!r}: its prunekit metadata is not text; the file is damaged")
    return tensors, text, digest
