"""Integer attributes an attention module keeps about its own widths, made true again after channels are removed.

Hugging Face attention modules read widths from attributes in their forward (GPT-2 splits its fused qkv output
with ``split(self.split_size)``; T5 views with ``self.n_heads``; Llama repeats keys ``self.num_key_value_groups``
times) and describe themselves with others (``num_attention_heads``, ``all_head_size``). Slicing the layers
changes the widths, not the attributes. Each rule here recognises a family of modules by the attributes and
child layers it has (no ``transformers`` import) and recomputes those attributes from the sliced child layers.

Whole heads are what structured pruning removes from attention (the width inside a head is fixed by the
reshape that splits heads), so a head's width (``head_dim``, ``attention_head_size``, ``key_value_proj_dim``)
stays and head counts follow from the projections' widths.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import nn

from ..errors import PruningError
from ..graph.export_capture import is_transposed_linear


def _out(layer: Any) -> Optional[int]:
    if isinstance(layer, nn.Linear):
        return layer.out_features
    if is_transposed_linear(layer):
        return int(layer.nf)
    return None


def _heads(module: nn.Module, width: int, head: int, what: str) -> int:
    if head <= 0 or width % head:
        raise PruningError(f"{type(module).__name__}: {what} is {width} wide, not a whole number of {head}-wide heads; "
                           "its attention heads were cut inside a head")
    return width // head


def _ints(module: nn.Module, *names: str) -> bool:
    return all(isinstance(getattr(module, n, None), int) and not isinstance(getattr(module, n), bool) for n in names)


def _query_key_value(module: nn.Module) -> Dict[str, int]:
    """BERT / ViT / Swin / RoBERTa self-attention: ``query`` / ``key`` / ``value`` Linears and
    ``num_attention_heads``, ``attention_head_size``, ``all_head_size``."""
    width = _out(getattr(module, "query", None))
    if width is None or not _ints(module, "num_attention_heads", "attention_head_size", "all_head_size"):
        return {}
    return {"all_head_size": width,
            "num_attention_heads": _heads(module, width, module.attention_head_size, "its query projection")}


def _fused_qkv(module: nn.Module) -> Dict[str, int]:
    """GPT-2: one ``c_attn`` Conv1D computing q, k and v (``split_size`` each; cross-attention: ``q_attn`` for q
    and ``c_attn`` for k, v), ``num_heads`` of ``head_dim``."""
    fused = _out(getattr(module, "c_attn", None))
    if fused is None or not _ints(module, "split_size", "num_heads", "head_dim"):
        return {}
    q = _out(getattr(module, "q_attn", None)) if getattr(module, "is_cross_attention", False) else None
    parts = 2 if q is not None else 3
    if fused % parts:
        raise PruningError(f"{type(module).__name__}: its fused projection is {fused} wide, not {parts} equal parts")
    width = fused // parts
    return {"split_size": width, "num_heads": _heads(module, width, module.head_dim, "each of q, k, v")}


def _grouped_query(module: nn.Module) -> Dict[str, int]:
    """Llama / Qwen2 / Mistral: ``q_proj`` / ``k_proj`` / ``v_proj`` of ``head_dim``-wide heads, keys and values
    shared by ``num_key_value_groups`` query heads each (and, in some versions, ``num_heads`` /
    ``num_key_value_heads`` attributes)."""
    q, k = _out(getattr(module, "q_proj", None)), _out(getattr(module, "k_proj", None))
    if q is None or k is None or not _ints(module, "head_dim"):
        return {}
    heads = _heads(module, q, module.head_dim, "its query projection")
    kv = _heads(module, k, module.head_dim, "its key projection")
    out: Dict[str, int] = {}
    if _ints(module, "num_key_value_groups"):
        if heads % kv:
            raise PruningError(f"{type(module).__name__}: {heads} query heads cannot share {kv} key/value heads evenly")
        out["num_key_value_groups"] = heads // kv
    for name, value in (("num_heads", heads), ("num_attention_heads", heads), ("num_key_value_heads", kv)):
        if _ints(module, name):
            out[name] = value
    return out


def _t5(module: nn.Module) -> Dict[str, int]:
    """T5: ``q`` / ``k`` / ``v`` / ``o`` Linears, ``n_heads`` heads of ``key_value_proj_dim``, ``inner_dim``."""
    width = _out(getattr(module, "q", None))
    if width is None or not _ints(module, "n_heads", "key_value_proj_dim", "inner_dim"):
        return {}
    out = {"inner_dim": width, "n_heads": _heads(module, width, module.key_value_proj_dim, "its query projection")}
    if _ints(module, "d_model") and isinstance(getattr(module, "q"), nn.Linear):
        out["d_model"] = module.q.in_features
    return out


RULES: List[Tuple[str, Callable[[nn.Module], Dict[str, int]]]] = [
    ("query/key/value heads", _query_key_value),
    ("fused qkv heads", _fused_qkv),
    ("grouped-query heads", _grouped_query),
    ("t5 heads", _t5),
]


def refresh_attributes(model: nn.Module) -> Dict[str, Dict[str, int]]:
    """Recompute every recognised module's width attributes from its layers; ``{module: {attr: value}}`` for
    the attributes that changed."""
    changed: Dict[str, Dict[str, int]] = {}
    for name, module in model.named_modules():
        for _, rule in RULES:
            for attr, value in rule(module).items():
                if getattr(module, attr) != value:
                    setattr(module, attr, value)
                    changed.setdefault(name, {})[attr] = value
    return changed


# --- the model's config (Hugging Face PretrainedConfig, or any object with these attributes) ---

DENSE_CONFIG_ATTR = "_prunekit_dense_config"  # the config as it was before the first structured pruning


def _mlp_width(module: nn.Module) -> Optional[int]:
    """The hidden width of a feed-forward block: BERT / ViT ``intermediate.dense``, Llama ``gate_proj`` /
    ``up_proj``, GPT-2 ``c_fc``, T5 ``wi`` / ``wi_0``."""
    for child, sibling in (("gate_proj", "down_proj"), ("up_proj", "down_proj"), ("c_fc", "c_proj"), ("wi", "wo"),
                           ("wi_0", "wo"), ("fc1", "fc2")):
        width = _out(getattr(module, child, None))
        if width is not None and getattr(module, sibling, None) is not None:
            return width
    if type(module).__name__.endswith("Intermediate"):
        return _out(getattr(module, "dense", None))
    return None


def _head_counts(module: nn.Module) -> Tuple[Optional[int], Optional[int]]:
    """(query heads, key/value heads) of a recognised attention module, else (None, None)."""
    if _query_key_value(module) or (_ints(module, "num_attention_heads", "all_head_size") and hasattr(module, "query")):
        return module.num_attention_heads, None
    if _fused_qkv(module) or (_ints(module, "split_size", "num_heads") and hasattr(module, "c_attn")):
        return module.num_heads, None
    if getattr(module, "q_proj", None) is not None and _ints(module, "head_dim"):
        q, k = _out(module.q_proj), _out(getattr(module, "k_proj", None))
        if q is not None and k is not None and module.head_dim:
            grouped = _ints(module, "num_key_value_groups") or _ints(module, "num_key_value_heads")
            return q // module.head_dim, (k // module.head_dim if grouped else None)
    if _ints(module, "n_heads", "key_value_proj_dim") and hasattr(module, "q"):
        return module.n_heads, None
    return None, None


def model_widths(model: nn.Module) -> Dict[str, set]:
    """Every width a config describes, as the set of values the model's layers have (one value: uniform)."""
    found: Dict[str, set] = {"num_attention_heads": set(), "num_key_value_heads": set(), "intermediate_size": set(),
                             "hidden_size": set()}
    for module in model.modules():
        heads, kv = _head_counts(module)
        if heads is not None:
            found["num_attention_heads"].add(heads)
        if kv is not None:
            found["num_key_value_heads"].add(kv)
        width = _mlp_width(module)
        if width is not None:
            found["intermediate_size"].add(width)
    get_embeddings = getattr(model, "get_input_embeddings", None)
    try:
        emb = get_embeddings() if callable(get_embeddings) else None
    except (NotImplementedError, AttributeError):  # transformers' base method for models without input embeddings
        emb = None
    emb = getattr(emb, "projection", emb)  # a vision model's patch embedding: its convolution
    if isinstance(emb, nn.Embedding):
        found["hidden_size"].add(emb.embedding_dim)
    elif isinstance(emb, nn.Conv2d):
        found["hidden_size"].add(emb.out_channels)
    return {k: v for k, v in found.items() if v}


def refresh_config(model: nn.Module) -> Tuple[Dict[str, int], List[str]]:
    """Set the ``config`` widths (``hidden_size``, ``num_attention_heads``, ``num_key_value_heads``,
    ``intermediate_size``; Hugging Face's attribute maps give GPT-2's ``n_embd`` / ``n_head`` / ``n_inner`` and
    T5's ``d_model`` / ``num_heads`` / ``d_ff`` the same names) to what the layers now have, where every layer
    agrees. Every config is refreshed once, from the outermost module that holds it: the model's own, and those
    of models inside it (a ``BertModel`` wrapped in a sentence-embedding module). Returns ``(changed,
    non_uniform)``: the fields set (``"bert.hidden_size"`` for a config inside), and the fields whose layers
    disagree (left as they were: no single value describes them; :func:`prunekit.hf.save_pretrained` keeps the
    plan for those).

    The config as it was before the first pruning is kept on its module (for rebuilding the dense model)."""
    changed: Dict[str, int] = {}
    non_uniform: List[str] = []
    for prefix, module, config in remember_dense_configs(model):
        got, mixed = _refresh_one(module, config)
        lead = f"{prefix}." if prefix else ""
        changed.update({lead + k: v for k, v in got.items()})
        non_uniform += [lead + k for k in mixed]
    return changed, non_uniform


def config_holders(model: nn.Module) -> List[Tuple[str, nn.Module, Any]]:
    """Every config object the model's modules hold (Hugging Face style: a ``config`` with ``to_dict``), once
    each, from its outermost holder: ``(name, holder, config)``."""
    out, done = [], set()
    for prefix, module in model.named_modules():
        config = module.__dict__.get("config", getattr(module, "config", None)) if prefix == "" else \
            module.__dict__.get("config")
        if config is None or id(config) in done or not callable(getattr(config, "to_dict", None)):
            continue
        done.add(id(config))
        out.append((prefix, module, config))
    return out


def remember_dense_configs(model: nn.Module) -> List[Tuple[str, nn.Module, Any]]:
    """:func:`config_holders`; a holder that has not kept one yet keeps a copy of its config as it is now (the
    dense config, when called before the first structured change)."""
    out = config_holders(model)
    for _, module, config in out:
        if not hasattr(module, DENSE_CONFIG_ATTR):
            object.__setattr__(module, DENSE_CONFIG_ATTR, config.to_dict())
    return out


def _refresh_one(model: nn.Module, config: Any) -> Tuple[Dict[str, int], List[str]]:
    changed: Dict[str, int] = {}
    non_uniform: List[str] = []
    for field, values in model_widths(model).items():
        # GPT-2 calls the feed-forward width n_inner (None: 4 x n_embd), T5 d_ff; the other names are mapped
        # by the configs' own attribute maps (n_embd, d_model, n_head, num_heads)
        name = next((n for n in CONFIG_NAMES.get(field, (field,)) if hasattr(config, n)), None)
        if name is None:
            continue
        if len(values) > 1:
            non_uniform.append(field)
            continue
        value = next(iter(values))
        if getattr(config, name) != value:
            setattr(config, name, value)
            changed[name] = value
    return changed, non_uniform


CONFIG_NAMES = {"intermediate_size": ("intermediate_size", "n_inner", "d_ff")}
