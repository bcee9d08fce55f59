"""Checkpoint integrity: sha256 digests of tensors and metadata, their verification, and the format/version checks."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Mapping, Optional

import torch

from ..errors import CheckpointError
from ..measure.storage import SEP

FORMAT_VERSION = "2"
READABLE_VERSIONS = ("1", "2")  # "1": written before checksums existed; loaded with a logged warning


def tensor_sha256(t: torch.Tensor) -> str:
    """sha256 (hex) of a tensor's dtype, shape and raw bytes, as stored in the checkpoint."""
    t = t.detach().cpu()
    h = hashlib.sha256(f"{t.dtype}{list(t.shape)}".encode())
    if t.is_quantized:
        h.update(repr((t.qscheme(), t.q_scale(), t.q_zero_point()) if t.qscheme() in
                      (torch.per_tensor_affine, torch.per_tensor_symmetric) else t.qscheme()).encode())
        t = t.int_repr()
    if t.numel():
        h.update(t.contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def metadata_sha256(text: str) -> str:
    """sha256 (hex) of the metadata JSON string, as stored next to it."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def parse_metadata(text: str, digest: Optional[str], path: Path) -> dict:
    """The metadata dict, once its sha256 matches and its format and version are ones this prunekit reads."""
    if digest is not None and metadata_sha256(text) != digest:
        raise CheckpointError(
            f"checkpoint {str(path)!r} is corrupt: its metadata (architecture spec, pruning plan, masks, tensor "
            "checksums) does not match its sha256. Restore a good copy or save the model again."
        )
    try:
        meta = json.loads(text)
    except ValueError as exc:
        raise CheckpointError(f"checkpoint {str(path)!r} is corrupt: its metadata is not valid JSON ({exc})") from exc
    if not isinstance(meta, dict) or meta.get("format") != "prunekit":
        fmt = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise CheckpointError(f"{str(path)!r} is not a prunekit checkpoint: its metadata format is {fmt!r}, "
                              "expected 'prunekit'; load it with the tool that wrote it")
    version = meta.get("version")
    if version not in READABLE_VERSIONS:
        raise CheckpointError(
            f"checkpoint {str(path)!r} has format version {version!r}; this prunekit reads versions "
            f"{', '.join(READABLE_VERSIONS)}. It was written by a newer prunekit (upgrade prunekit) or it is damaged."
        )
    if version == FORMAT_VERSION and digest is None:
        raise CheckpointError(
            f"checkpoint {str(path)!r} says format version {version} but lacks the metadata checksum every such file "
            "has: it is damaged or was not written by prunekit.save. Restore a good copy or save the model again."
        )
    return meta


def verify_tensors(tensors: Mapping[str, torch.Tensor], digests: Any, path: Path) -> None:
    """Raise CheckpointError unless the stored tensors are exactly those listed in ``digests``, each matching its sha256."""
    if not isinstance(digests, dict):
        raise CheckpointError(f"checkpoint {str(path)!r} lacks its tensor checksums (metadata 'sha256'); it is damaged")
    missing = [k for k in digests if k not in tensors]
    if missing:
        raise CheckpointError(f"checkpoint {str(path)!r} lacks tensor {_logical(missing[0])!r} (stored as {missing[0]!r}), "
                              "which its metadata lists: the file is truncated or damaged")
    extra = [k for k in tensors if k not in digests]
    if extra:
        raise CheckpointError(f"checkpoint {str(path)!r} holds tensor {_logical(extra[0])!r} (stored as {extra[0]!r}), "
                              "which its metadata does not list: the file was altered or damaged")
    for key, t in tensors.items():
        if tensor_sha256(t) != digests[key]:
            raise CheckpointError(
                f"checkpoint {str(path)!r} is corrupt: tensor {_logical(key)!r} (stored as {key!r}) does not match its "
                "sha256. Restore a good copy or save the model again."
            )


def _logical(key: str) -> str:
    """The state-dict name a stored tensor key belongs to (encoded tensors are stored as ``name<SEP>part``)."""
    return key.split(SEP)[0]


def malformed_entry(path: Path, entry: str) -> CheckpointError:
    """The error for a metadata entry of the wrong shape (the metadata checksum matched, so the writer was faulty)."""
    return CheckpointError(f"checkpoint {str(path)!r}: its metadata entry {entry!r} is malformed; the file is damaged")
