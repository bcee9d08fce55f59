"""Checkpoints: safetensors (or weights-only torch files) + JSON metadata; loading never unpickles or imports code.

Layout (format version 2): the tensors of :func:`prunekit.measure.storage.encode_state` (0/1
masks as 1-bit bitmaps, pruned weights stored as +0.0, tied tensors once, optionally the
sparse bitmap + values encoding) and a JSON metadata string (architecture spec, structured
plan, masked parameter names, the state dict's per-module versions, user metadata and a
sha256 of every stored tensor), itself covered by a sha256 stored next to it.
"""
from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Dict, Mapping, Optional, Tuple, Union

import torch
from torch import nn

from ..errors import CheckpointError, PruningError
from ..measure.storage import SEP, decode_state, encode_state
from ..modelutils import clone_model
from ..models import MODELS, create_model
from ..unstructured.masks import attach_refresh_hooks, masked_modules, refresh_masked, set_mask
from .atomic import describe_os_error, temp_path

log = logging.getLogger(__name__)

FORMAT_VERSION = "2"
READABLE_VERSIONS = ("1", "2")  # "1": written before checksums existed; loaded with a logged warning
META_KEY = "__prunekit_metadata__"  # torch-file variant: the metadata JSON under this key...
DIGEST_KEY = "__prunekit_metadata_sha256__"  # ...and its sha256 under this one
ST_META, ST_DIGEST = "prunekit", "prunekit.sha256"  # the same two strings in safetensors' header metadata

PathLike = Union[str, os.PathLike]


def save(model: nn.Module, path: PathLike, *, sparse: bool = False,
         metadata: Optional[Dict[str, Any]] = None, model_spec: Optional[Dict[str, Any]] = None) -> Path:
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

    Integrity: every stored tensor gets a sha256, and the metadata (spec, plan, masks,
    checksums) a sha256 of its own; :func:`load` verifies both (files from before checksums,
    format 1, still load, with a logged warning). The file is written to a
    temporary sibling and renamed, so a failed write (disk full, read-only folder...) raises
    :class:`CheckpointError` and leaves no partial file; an older file at ``path`` stays as it
    was. New files get the usual permissions (``0o666`` minus the umask).
    """
    path = Path(path)
    masked = sorted(f"{mod}.{p}" if mod else p for mod, _, p in masked_modules(model))
    state = model.state_dict()
    tensors, aliases = encode_state(state, sparse=sparse, masked=masked)
    if META_KEY in tensors or DIGEST_KEY in tensors:
        raise CheckpointError(f"the model has a tensor named {META_KEY!r} or {DIGEST_KEY!r}, which prunekit reserves; rename it")
    meta = {
        "format": "prunekit", "version": FORMAT_VERSION, "sparse": bool(sparse),
        "masked": masked, "plan": _plan_of(model), "model_spec": model_spec or getattr(model, "_prunekit_spec", None),
        "user": metadata or {}, "aliases": aliases, "state_metadata": _state_metadata(state),
        "sha256": {k: tensor_sha256(v) for k, v in tensors.items()},
    }
    try:
        text = json.dumps(meta)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(
            f"cannot save checkpoint {str(path)!r}: metadata and model_spec must be JSON data "
            f"(dicts, lists, strings, numbers): {exc}"
        ) from exc
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()
    if _is_torch_file(path):
        def write(tmp: Path) -> None:
            with open(tmp, "wb", buffering=0) as f:
                out = _WholeWrites(f)
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
    _write_atomic(path, write)
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
    tensors, text, digest = _read_raw(path)
    if text is None:
        log.warning("%s has no prunekit metadata: loading it as a plain state dict without checksums "
                    "(corruption cannot be detected)", path)
        return tensors, {}
    meta = _parse_metadata(text, digest, path)
    if meta["version"] == FORMAT_VERSION:
        _verify_tensors(tensors, meta.get("sha256"), path)
    aliases = meta.get("aliases") or {}
    if not isinstance(aliases, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in aliases.items()):
        raise CheckpointError(f"checkpoint {str(path)!r}: its metadata entry 'aliases' is malformed; the file is damaged")
    state = decode_state(tensors, sparse=bool(meta.get("sparse")), aliases=aliases)
    return _with_state_metadata(state, meta.get("state_metadata"), path), meta


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
    model = _architecture(model, meta, path, trust_model_spec)
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
    _install_masks(model, meta.get("masked") or [], path)
    attach_refresh_hooks(model)  # masks read functionally by a parent (nn.MultiheadAttention.out_proj) hold too
    _check_compatible(model, state, strict, path)
    model.load_state_dict(state, strict=strict)
    refresh_masked(model)  # module.weight = weight_orig * weight_mask from the loaded tensors, before any forward
    if meta.get("model_spec"):
        model._prunekit_spec = meta["model_spec"]
    return model.eval()


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


# --- reading ---

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


def _parse_metadata(text: str, digest: Optional[str], path: Path) -> dict:
    if digest is not None and hashlib.sha256(text.encode("utf-8")).hexdigest() != digest:
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
    if version != FORMAT_VERSION:
        log.warning("%s was written by an older prunekit (checkpoint format %s) without checksums: it is loaded, but "
                    "corruption cannot be detected; save it again with prunekit.save to add them", path, version)
    return meta


def _verify_tensors(tensors: Mapping[str, torch.Tensor], digests: Any, path: Path) -> None:
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
    return key.split(SEP)[0]


def _state_metadata(state: Mapping[str, torch.Tensor]) -> Optional[Dict[str, Dict[str, Any]]]:
    """``state_dict()._metadata`` (module prefix -> {"version": n}) as JSON data, or None."""
    md = getattr(state, "_metadata", None)
    if not md:
        return None
    return {prefix: {k: v for k, v in entry.items()
                     if isinstance(k, str) and (v is None or isinstance(v, (bool, int, float, str)))}
            for prefix, entry in md.items() if isinstance(prefix, str) and isinstance(entry, dict)}


def _with_state_metadata(state: Dict[str, torch.Tensor], saved: Any, path: Path) -> Dict[str, torch.Tensor]:
    """The state dict as an OrderedDict carrying the saved per-module versions (torch's ``_load_from_state_dict`` reads them)."""
    if saved is None:
        return state
    if not isinstance(saved, dict) or not all(isinstance(v, dict) for v in saved.values()):
        raise CheckpointError(f"checkpoint {str(path)!r}: its metadata entry 'state_metadata' is malformed; the file is damaged")
    out: Dict[str, torch.Tensor] = OrderedDict(state)
    out._metadata = OrderedDict((k, dict(v)) for k, v in saved.items())  # type: ignore[attr-defined]
    return out


# --- rebuilding ---

def _architecture(model, meta: dict, path, trust_model_spec: bool) -> nn.Module:
    if isinstance(model, nn.Module):
        return clone_model(model)  # the caller's instance stays untouched if loading fails
    if isinstance(model, str):
        return create_model(model)  # the caller's own choice: importing "pkg.mod:factory" is fine
    if callable(model):
        built = model()
        if not isinstance(built, nn.Module):
            raise CheckpointError(f"the model factory passed to load returned {type(built).__name__}, expected a torch.nn.Module")
        return built
    spec = meta.get("model_spec")
    if not spec:
        raise CheckpointError(
            f"{path} does not record its architecture; pass model=<an instance, a registered name or a factory>"
        )
    if not isinstance(spec, dict) or not isinstance(spec.get("name"), str) or not isinstance(spec.get("kwargs") or {}, dict):
        raise CheckpointError(f"checkpoint {str(path)!r}: its model_spec {spec!r} is malformed (expected "
                              "{'name': str, 'kwargs': dict}); pass model=<an instance or a factory>")
    name, kwargs = spec["name"], dict(spec.get("kwargs") or {})
    if name in MODELS:  # a plain dict lookup: nothing is imported unless the caller allowed it
        factory: Callable[..., Any] = MODELS.get(name)
    elif trust_model_spec:
        def factory(**kw):
            return create_model(name, **kw)
    else:
        raise CheckpointError(
            f"checkpoint {str(path)!r} names its architecture {name!r} (kwargs {kwargs}), which is not a model registered "
            "in prunekit.models.MODELS; refusing to import and call it, because a forged file could name any function "
            "(e.g. 'os:system') and run code. To load it safely, pass the architecture yourself: "
            "prunekit.load(path, model=<an instance or a factory>), or register the factory before loading with "
            f"@prunekit.models.register_model({name!r}). If you trust this file, "
            "prunekit.load(path, trust_model_spec=True) imports and calls it."
        )
    try:
        built = factory(**kwargs)
    except Exception as exc:
        raise CheckpointError(
            f"checkpoint {str(path)!r}: building its architecture {name!r} with kwargs {kwargs} failed "
            f"({type(exc).__name__}: {exc}); pass model=<an instance or a factory>"
        ) from exc
    if not isinstance(built, nn.Module):
        raise CheckpointError(f"checkpoint {str(path)!r}: model factory {name!r} returned {type(built).__name__}, "
                              "expected a torch.nn.Module; pass model=<an instance or a factory>")
    return built


def _install_masks(model: nn.Module, masked: Any, path) -> None:
    """Put all-ones masks where the checkpoint has masks, so ``load_state_dict`` finds ``X_orig`` / ``X_mask``."""
    if not isinstance(masked, list) or not all(isinstance(k, str) for k in masked):
        raise CheckpointError(f"checkpoint {str(path)!r}: its metadata entry 'masked' is malformed; the file is damaged")
    for key in masked:
        mod_name, _, pname = key.rpartition(".")
        try:
            module = model.get_submodule(mod_name)
        except AttributeError:
            raise CheckpointError(
                f"checkpoint {str(path)!r} masks {key!r} but the model has no layer {mod_name!r}: it was saved from "
                "another architecture; load it into the model it was saved from"
            ) from None
        current = getattr(module, f"{pname}_orig", None) if hasattr(module, f"{pname}_mask") else getattr(module, pname, None)
        if not isinstance(current, nn.Parameter):
            raise CheckpointError(
                f"checkpoint {str(path)!r} masks {key!r} but layer {mod_name!r} ({type(module).__name__}) has no such "
                "parameter: it was saved from another architecture; load it into the model it was saved from"
            )
        set_mask(module, pname, torch.ones_like(current))


def _check_compatible(model: nn.Module, state: Dict[str, torch.Tensor], strict: bool, path) -> None:
    expected = model.state_dict()
    wrong = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(expected[k].shape)}"
             for k, v in state.items() if k in expected and tuple(expected[k].shape) != tuple(v.shape)]
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    problems = []
    if wrong:
        problems.append("shape mismatch: " + "; ".join(wrong[:6]))
    if strict and missing:
        problems.append("missing keys: " + ", ".join(missing[:6]))
    if strict and unexpected:
        problems.append("unexpected keys: " + ", ".join(unexpected[:6]))
    if problems:
        raise CheckpointError(
            f"checkpoint {str(path)!r} does not match the model ({' | '.join(problems)}). "
            "Load it into the architecture it was saved from (same model and constructor arguments)."
        )


def _plan_of(model: nn.Module):
    plan = getattr(model, "_prunekit_plan", None)
    return plan if plan else None


def _is_torch_file(path: Path) -> bool:
    return path.suffix in (".pt", ".pth", ".bin")


# --- writing ---

def _write_atomic(path: Path, write: Callable[[Path], None]) -> None:
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
        _discard(tmp)
        if isinstance(exc, CheckpointError) or not isinstance(exc, Exception):
            raise
        oserr = _as_os_error(exc)
        if oserr is not None:
            raise CheckpointError(describe_os_error(oserr, path, "checkpoint")
                                  + "; nothing was written (an earlier file at that path is unchanged)") from exc
        raise CheckpointError(f"cannot write checkpoint {str(path)!r}: {type(exc).__name__}: {str(exc)[:300]}; "
                              "nothing was written (an earlier file at that path is unchanged)") from exc


def _create_temp(tmp: Path) -> int:
    """Create ``tmp`` (never following a planted symlink) with ``0o666`` minus the umask; returns that mode."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(tmp, flags, 0o666)
    except FileExistsError:  # left over by a crashed save of this process id: ours to replace
        _discard(tmp)
        fd = os.open(tmp, flags, 0o666)
    try:
        return os.fstat(fd).st_mode & 0o777
    finally:
        os.close(fd)


class _WholeWrites:
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


def _as_os_error(exc: BaseException) -> Optional[OSError]:
    """The OSError behind a writer error: itself, or the "os error N" safetensors' Rust writer reports."""
    if isinstance(exc, OSError) and exc.errno:
        return exc
    m = re.search(r"os error (\d+)", str(exc))
    if m:
        code = int(m.group(1))
        return OSError(code, os.strerror(code))
    return None


def _discard(tmp: Path) -> None:
    try:
        tmp.unlink()
    except OSError:
        pass
