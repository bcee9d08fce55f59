"""Hugging Face ``transformers`` models after structured pruning: save them so that they load again.

Structured pruning keeps a model's config truthful where every layer agrees (``hidden_size``,
``num_attention_heads``, ``num_key_value_heads``, ``intermediate_size``: see
:func:`prunekit.structured.attributes.refresh_config`). Two ways to ship the result:

* **Plain Hugging Face.** When the config alone rebuilds the pruned shapes (every layer of a kind keeps the same
  widths, e.g. ``prunekit.prune(..., granularity="channel", uniform=True)``, and the config's derived sizes such
  as BERT's head size ``hidden_size / num_attention_heads`` still hold), ``model.save_pretrained(dir)`` and then
  ``transformers.AutoModel*.from_pretrained(dir)`` load it with no prunekit code. :func:`hf_loadable` says
  whether that holds and, if not, which parameters would come out another shape.
* **Any widths.** :func:`save_pretrained` writes the dense config, the weights (safetensors) and
  ``prunekit.json`` (the dense config and the structured plan); :func:`from_pretrained` builds the dense
  architecture from that config, replays the plan and loads the weights. (Where the config does describe the
  model, :func:`save_pretrained` is ``model.save_pretrained`` plus ``prunekit.json``.) Loading never runs code a file names: the model class is
  looked up among ``transformers``' own model classes (or passed as ``model_class``), and the weights are read
  with safetensors.

:func:`describe_model` names what structured pruning sees in a model (heads, KV groups, FFN and hidden widths) and
what it leaves out, why (``prunekit inspect DIR``). ``transformers`` is imported only when these functions run.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError
from ..structured.attributes import DENSE_CONFIG_ATTR, model_widths
from ..structured.plan import apply_plan, get_plan, set_plan
from .describe import GroupInfo, ModelDescription, config_inputs, describe_model, load_model

META_FILE = "prunekit.json"
WEIGHTS_FILE = "prunekit_model.safetensors"
FORMAT = "prunekit-hf"
VERSION = 1

__all__ = ["save_pretrained", "from_pretrained", "hf_loadable", "META_FILE", "describe_model", "config_inputs",
           "load_model", "GroupInfo", "ModelDescription"]


def _transformers():
    try:
        import transformers
    except ImportError:  # pragma: no cover - transformers is a test dependency
        raise ConfigError("prunekit.hf needs the `transformers` package (pip install transformers)") from None
    return transformers


def _check_model(model: Any) -> None:
    transformers = _transformers()
    if not isinstance(model, transformers.PreTrainedModel):
        raise ConfigError(f"prunekit.hf works on transformers.PreTrainedModel models, got {type(model).__name__}; "
                          "save other models with prunekit.save")


def hf_loadable(model: nn.Module) -> Tuple[bool, List[str]]:
    """Whether ``type(model)(model.config)`` builds every parameter and buffer in the pruned model's shape, so
    that plain ``from_pretrained`` can load it; ``(True, [])`` or ``(False, [why not, ...])``."""
    _check_model(model)
    problems = [f"{field} differs between layers: {sorted(values)}" for field, values in model_widths(model).items()
                if len(values) > 1]
    try:
        with torch.device("meta"):
            fresh = type(model)(type(model.config).from_dict(model.config.to_dict()))
    except Exception as exc:  # the architecture's own checks (BERT: hidden size not a multiple of the heads)
        return False, problems + [f"the config cannot build the model: {type(exc).__name__}: "
                                  f"{' '.join(str(exc).split())[:200]}"]
    want = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    got = {k: tuple(v.shape) for k, v in fresh.state_dict().items()}
    problems += [f"{k}: the config builds {got.get(k)}, the model has {shape}" for k, shape in want.items()
                 if got.get(k) != shape]
    problems += [f"{k}: the config builds it, the model has none" for k in got if k not in want]
    return not problems, problems


def save_pretrained(model: nn.Module, directory: Union[str, Path], **kwargs) -> Path:
    """Save a (pruned) transformers model so that :func:`from_pretrained` rebuilds it; returns the directory.

    When the config describes the model (:func:`hf_loadable`), this is ``model.save_pretrained(directory,
    **kwargs)``, loadable by ``transformers`` itself, plus ``prunekit.json`` (the plan, for the record).
    Otherwise ``config.json`` holds the dense architecture's config (``transformers`` then refuses the weights'
    shapes rather than loading something else), ``prunekit_model.safetensors`` the weights, and ``prunekit.json``
    the dense config and the structured plan that turn the dense architecture into this one.
    """
    _check_model(model)
    directory = Path(directory)
    loadable, problems = hf_loadable(model)
    dense = getattr(model, DENSE_CONFIG_ATTR, None) or model.config.to_dict()
    if loadable:
        model.save_pretrained(str(directory), **kwargs)
        weights = "transformers"
    else:
        if kwargs:
            raise ConfigError(f"save options {sorted(kwargs)} are transformers' save_pretrained options, which cannot "
                              f"save this model (its config cannot describe it: {problems[0]})")
        from safetensors.torch import save_file

        directory.mkdir(parents=True, exist_ok=True)
        type(model.config).from_dict(dense).to_json_file(str(directory / "config.json"))
        state, seen = {}, set()
        for name, t in model.state_dict(keep_vars=True).items():  # a tied tensor once, under its first name
            if id(t) not in seen:
                seen.add(id(t))
                state[name] = t.detach().contiguous()
        save_file(state, str(directory / WEIGHTS_FILE), metadata={"format": FORMAT})
        weights = WEIGHTS_FILE
    meta = {"format": FORMAT, "version": VERSION, "architecture": type(model).__name__, "dense_config": dense,
            "plan": get_plan(model), "weights": weights, "hf_loadable": loadable, "why_not": problems[:20]}
    (directory / META_FILE).write_text(json.dumps(meta, indent=1, default=_json_default))
    return directory


def _json_default(value: Any) -> Any:
    if isinstance(value, torch.dtype):
        return str(value).replace("torch.", "")
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _model_class(name: Any, model_class: Optional[type]) -> type:
    transformers = _transformers()
    if model_class is not None:
        if not (isinstance(model_class, type) and issubclass(model_class, transformers.PreTrainedModel)):
            raise ConfigError(f"model_class must be a transformers model class, got {model_class!r}")
        return model_class
    cls = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)
            and cls.__module__.startswith("transformers.models.")):
        raise CheckpointError(f"{META_FILE} names the architecture {name!r}, which is not a transformers model "
                              "class; pass model_class=<the transformers class> to from_pretrained")
    return cls


def _read_meta(directory: Path) -> Optional[Dict[str, Any]]:
    path = directory / META_FILE
    if not path.exists():
        return None
    try:
        meta = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not readable JSON ({exc}); the save is damaged") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a prunekit Hugging Face record (format {FORMAT!r})")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path} has version {meta.get('version')!r}; this prunekit reads version {VERSION}")
    if not isinstance(meta.get("dense_config"), dict):
        raise CheckpointError(f"{path} has no dense_config mapping; the save is damaged")
    return meta


def from_pretrained(directory: Union[str, Path], model_class: Optional[type] = None) -> nn.Module:
    """The model :func:`save_pretrained` wrote, rebuilt in eval mode: the dense architecture from the saved dense
    config, the plan replayed, the weights loaded (tied weights re-tied). A folder without ``prunekit.json``
    is loaded with ``transformers``' own ``from_pretrained`` of ``model_class`` (or the config's architecture).
    """
    directory = Path(directory)
    meta = _read_meta(directory)
    if meta is None:
        transformers = _transformers()
        config = transformers.AutoConfig.from_pretrained(str(directory), local_files_only=True)
        arch = (getattr(config, "architectures", None) or [None])[0]
        return _model_class(arch, model_class).from_pretrained(str(directory), local_files_only=True).eval()
    cls = _model_class(meta.get("architecture"), model_class)
    plan = meta.get("plan")
    if meta.get("weights") == "transformers":
        model = cls.from_pretrained(str(directory), local_files_only=True)
        if plan:
            set_plan(model, plan)
        return model.eval()
    if meta.get("weights") != WEIGHTS_FILE or not (directory / WEIGHTS_FILE).exists():
        raise CheckpointError(f"{directory} lacks {WEIGHTS_FILE}, which {META_FILE} says holds the weights")
    from safetensors.torch import load_file

    model = cls(cls.config_class.from_dict(meta["dense_config"]))
    if plan:
        apply_plan(model, plan)
    try:
        state = load_file(str(directory / WEIGHTS_FILE))
    except Exception as exc:
        raise CheckpointError(f"{directory / WEIGHTS_FILE} is not a readable safetensors file ({exc})") from None
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as exc:
        raise CheckpointError(f"{directory}: the weights do not fit the rebuilt model "
                              f"({' '.join(str(exc).split())[:300]})") from None
    tied = _tied_names(model)
    missing = [k for k in result.missing_keys if k not in tied]
    if missing or result.unexpected_keys:
        raise CheckpointError(f"{directory}: the weights do not fit the rebuilt model (missing {missing[:5]}, "
                              f"unexpected {list(result.unexpected_keys)[:5]}); the save is damaged or was made "
                              "by another model")
    return model.eval()


def _tied_names(model: nn.Module) -> set:
    """Names of parameters that share their tensor with another name (saved once by save_pretrained)."""
    by_id: Dict[int, List[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        by_id.setdefault(id(p), []).append(name)
    return {n for names in by_id.values() if len(names) > 1 for n in names}
