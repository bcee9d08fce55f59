"""granularity='block' on transformer stacks: the repeated layers of a Hugging Face style model, removed whole.

A *layer stack* is an ``nn.ModuleList`` of two or more modules of one class whose length a config field states
(``num_hidden_layers``, ``n_layer``, ``num_layers``, ``num_decoder_layers``, ``encoder_layers``,
``decoder_layers``; the config is the ``config`` attribute of the model or of a module around the list). Its
layers are removed from the list itself, not replaced by a stand-in: a transformer layer takes masks and position
embeddings beside its hidden states and may return a tuple, and the model loops over the list (Llama even slices it
by ``config.num_hidden_layers``). What keeps the model truthful after a removal:

* the count field is set to the new length, in every config that states it (a private copy inside an
  encoder-decoder stack too), so ``model.save_pretrained`` then ``AutoModel.from_pretrained`` rebuilds it;
* per-layer config lists of the stack's length (``layer_types``) keep the kept layers' entries;
* a kept layer's own index attributes (``layer_idx``, ``layer_id``: which cache slot it writes) are renumbered.

A layer whose parameters are not named as the others' (T5's first block holds the relative position bias the
other blocks reuse) is never removed. Where two stacks would need the same config field (a shared config with a
single count), neither is a stack: removing from one would make the config lie about the other.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Dict, Iterable, List, Tuple

from torch import nn

LAYER_COUNTS = ("num_hidden_layers", "n_layer", "num_layers", "num_decoder_layers", "encoder_layers",
                "decoder_layers")
INDEX_ATTRS = ("layer_idx", "layer_id")


@dataclass
class LayerStack:
    name: str  # the ModuleList's qualified name
    size: int
    fields: List[Tuple[Any, List[str]]]  # (config object, its count fields to set)
    lists: List[Tuple[Any, str]] = field(default_factory=list)  # per-layer config lists to subset
    kept: Dict[int, str] = field(default_factory=dict)  # index -> why it cannot be removed

    def layer_names(self) -> List[str]:
        return [f"{self.name}.{i}" for i in range(self.size)]

    def candidates(self) -> List[str]:
        return [f"{self.name}.{i}" for i in range(self.size) if i not in self.kept]


def _configs(model: nn.Module) -> List[Tuple[str, Any]]:
    from .attributes import config_holders

    return [(prefix, config) for prefix, _, config in config_holders(model)]


def _side(path: str) -> str:
    parts = path.split(".")
    if any("decoder" in p for p in parts):
        return "decoder"
    return "encoder" if any("encoder" in p for p in parts) else ""


def _pick(candidates: List[str], path: str) -> str:
    """The count field of ``candidates`` (fields equal to the stack's length) that names this stack."""
    side = _side(path)
    if side == "decoder":
        pref = [c for c in candidates if "decoder" in c]
    elif side == "encoder":
        pref = [c for c in candidates if "encoder" in c] or [c for c in candidates if "decoder" not in c]
    else:
        pref = [c for c in candidates if "decoder" not in c and "encoder" not in c]
    return (pref or candidates)[0]


def _counts(config: Any, size: int) -> List[str]:
    out = []
    for name in LAYER_COUNTS:
        try:
            value = getattr(config, name)
        except AttributeError:
            continue
        if type(value) is int and value == size:
            out.append(name)
    return out


def find_layer_stacks(model: nn.Module) -> List[LayerStack]:
    """The model's layer stacks (module docstring), outermost only; ``[]`` for a model without a config."""
    configs = _configs(model)
    if not configs:
        return []
    found: List[Tuple[str, nn.ModuleList, List[Tuple[str, Any, List[str]]]]] = []
    for name, mod in model.named_modules():
        if not name or not isinstance(mod, nn.ModuleList) or len(mod) < 2 or len({type(m) for m in mod}) != 1:
            continue
        if any(name.startswith(f[0] + ".") for f in found):
            continue  # a list inside a layer of a stack
        reach = []
        for prefix, config in configs:
            if prefix and not name.startswith(prefix + "."):
                continue
            counts = _counts(config, len(mod))
            if counts:
                reach.append((prefix, config, counts))
        if reach:
            found.append((name, mod, reach))
    users = Counter(id(c) for _, _, reach in found for _, c, _ in reach)
    claimed: Counter = Counter()
    chosen = []
    for name, mod, reach in found:
        fields = []
        for prefix, config, counts in reach:
            private = prefix != "" and users[id(config)] == 1
            fields.append((config, counts if private else [_pick(counts, name)]))
        chosen.append((name, mod, fields))
        for config, names in fields:
            for n in names:
                claimed[(id(config), n)] += 1
    stacks = []
    for name, mod, fields in chosen:
        if any(claimed[(id(config), n)] > 1 for config, names in fields for n in names):
            continue  # a field two stacks would need: removing from one makes the config lie about the other
        lists = []
        for config, _ in fields:
            if users[id(config)] != 1:
                continue
            for key, value in config.to_dict().items():
                if isinstance(value, (list, tuple)) and len(value) == len(mod) and hasattr(config, key):
                    lists.append((config, key))
        names_of = [frozenset(n for n, _ in layer.named_parameters()) for layer in mod]
        shared = frozenset.intersection(*names_of)
        kept = {i: (f"it holds parameters the other layers lack ({', '.join(sorted(names - shared)[:3])}), which "
                    "they may use") for i, names in enumerate(names_of) if names != shared}
        stacks.append(LayerStack(name, len(mod), fields, lists, kept))
    return stacks


def remove_layers(model: nn.Module, stack: LayerStack, indices: Iterable[int]) -> None:
    """Take layers ``indices`` out of ``stack`` (a :func:`find_layer_stacks` entry of ``model``): the list, its
    config counts and per-layer lists, and the kept layers' index attributes (module docstring)."""
    from .attributes import remember_dense_configs

    gone = set(int(i) for i in indices)
    if not gone:
        return
    remember_dense_configs(model)
    layers = model.get_submodule(stack.name)
    keep = [i for i in range(len(layers)) if i not in gone]
    new = nn.ModuleList([layers[i] for i in keep])
    for new_index, old_index in enumerate(keep):
        for sub in new[new_index].modules():
            for attr in INDEX_ATTRS:
                value = sub.__dict__.get(attr)
                if type(value) is int and value == old_index:
                    setattr(sub, attr, new_index)
    parent_name, _, child = stack.name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
    for config, names in stack.fields:
        for n in names:
            setattr(config, n, len(keep))
    for config, key in stack.lists:
        value = getattr(config, key)
        setattr(config, key, type(value)(value[i] for i in keep))
