"""What structured pruning sees in a (Hugging Face) model: its dependency groups by kind, and what is left out.

:func:`describe_model` traces the model once with the graph analysis structured pruning uses
(:func:`prunekit.graph.groups.build_graph` with the layer handlers, and ``ignore`` / ``freeze`` marked as
``prunekit.prune`` marks them), then names each group from its members' layers and axes alone:

* ``heads``: attention heads (a producer's output channels come in whole heads of ``head_dim``);
* ``kv_groups``: grouped-query attention, one unit per key/value head with the query heads that share it
  (the attention output's consumer reads ``query_heads / units`` heads per unit);
* ``ffn``: the hidden neurons of a block's MLP (``intermediate_size``; a gated MLP's gate, up and down together);
* ``hidden``: the residual stream (written by an embedding, or by layers of several branches);
* ``conv``: convolution channels; ``linear``: other Linear channels (a pooler); ``output``: channels no layer
  reads (the logits); ``other``: the rest.

No config value is read to classify, so a report can be checked against the config. :func:`config_inputs`
builds inputs from a config when none are given; :func:`load_model` loads a model folder or a config file,
offline. ``transformers`` is imported only by those two functions.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from .._inputs import split_inputs
from ..errors import CheckpointError, ConfigError
from ..graph.groups import build_graph
from ..match import as_patterns, check_patterns
from ..structured.describe import member_rows
from ..structured.handlers import handler_for
from ..structured.handlers.attention import MultiheadAttentionHandler
from ..structured.handlers.conv import ConvHandler
from ..structured.handlers.linear import EmbeddingHandler, LinearHandler

KINDS = ("heads", "kv_groups", "ffn", "hidden", "conv", "linear", "output", "other", "positions")
KIND_TITLES = {"heads": "attention heads", "kv_groups": "KV groups (grouped-query attention)",
               "ffn": "FFN / MLP neurons", "hidden": "hidden width (residual stream)", "conv": "conv channels",
               "linear": "other linear channels", "output": "model outputs", "other": "other",
               "positions": "dims only raw parameters hold (positions, table rows): not channels"}
PRODUCERS = ("out", "embed")
OUTPUT_REASON = "reaches the model output"  # what graph/propagate.py freezes the model's output channels with
_NUMBER = re.compile(r"(?<![^.])\d+(?![^.])")  # a whole dotted name part made of digits (a block number)

__all__ = ["GroupInfo", "ModelDescription", "config_inputs", "describe_model", "is_model_path", "load_model", "KINDS"]


@dataclass
class GroupInfo:
    """One dependency group, named: ``units`` removable units (heads, KV groups, neurons, channels), of which
    ``prunable`` may go; ``left_out`` says (module, why) for the rest."""

    index: int
    kind: str  # one of KINDS
    units: int  # atoms of the group: heads, KV groups, neurons or channels
    prunable: int
    where: str  # the members' common module prefix ('' at the root)
    layers: List[str]  # the layers that produce the channels
    members: List[Tuple[str, str, str, int]]  # (module, layer type, axis kind, positions)
    head_dim: Optional[int] = None  # heads / kv_groups: channels per head
    query_heads: Optional[int] = None  # heads / kv_groups: query heads in the group (= units for heads)
    left_out: List[Tuple[str, str]] = field(default_factory=list)  # (module, why its channels stay)

    @property
    def reasons(self) -> List[str]:
        return sorted({why for _, why in self.left_out})


@dataclass
class ModelDescription:
    """``describe_model``'s answer: the model, its groups in graph order, and layers no channel flows through."""

    model: str  # class name
    params: int
    inputs: Dict[str, List[int]]  # example input name -> shape
    groups: List[GroupInfo]
    opaque: List[Tuple[str, str]] = field(default_factory=list)  # (module, why no channel flows through it)
    # transformer layer stacks granularity='block' removes layers from: (list name, layers, {index: why it stays})
    layer_stacks: List[Tuple[str, int, Dict[int, str]]] = field(default_factory=list)

    def by_kind(self) -> Dict[str, List[GroupInfo]]:
        """Kind -> its groups, kinds in :data:`KINDS` order, only kinds present."""
        out: Dict[str, List[GroupInfo]] = {}
        for kind in KINDS:
            found = [g for g in self.groups if g.kind == kind]
            if found:
                out[kind] = found
        return out

    def left_out(self) -> List[GroupInfo]:
        """Channel groups with at least one unit that structured pruning keeps (``positions`` groups, dims that
        no layer produces, such as a position embedding's token dim, are not channels and not listed)."""
        return [g for g in self.groups if g.prunable < g.units and g.kind != "positions"]

    def to_dict(self) -> Dict[str, Any]:
        return asdict(self)


def describe_model(model: nn.Module, example_inputs=None, *, ignore=None, freeze=None,
                   leaf_modules: Sequence[Any] = (), tracer: str = "auto", seq_len: int = 16,
                   image_size: Optional[int] = None) -> ModelDescription:
    """The dependency groups of ``model`` named by kind (see the module docstring), and what is left out, why.

    ``example_inputs`` default to :func:`config_inputs` of the model's config (``seq_len`` tokens, or one image
    of ``image_size``). ``ignore`` / ``freeze`` mean what they mean to ``prunekit.prune``; a pattern matching no
    module raises :class:`~prunekit.errors.PruningError`.
    """
    from ..api import run_once
    from ..structured.api import mark_selection

    if example_inputs is None:
        example_inputs = config_inputs(model, seq_len=seq_len, image_size=image_size)
    ignore, freeze = as_patterns(ignore, "ignore"), as_patterns(freeze, "freeze")
    check_patterns(model, "ignore", ignore)
    check_patterns(model, "freeze", freeze)
    was = model.training
    model.eval()
    try:
        run_once(model, example_inputs)  # wrong inputs: InputError naming their shapes, not a trace dump
        graph = build_graph(model, example_inputs, tuple(as_patterns(leaf_modules, "leaf_modules")), tracer,
                            module_rule=handler_for)
    finally:
        model.train(was)
    if ignore or freeze:
        mark_selection(graph, model, SimpleNamespace(ignore=ignore, freeze=freeze), allow_empty=True)
    groups = [_describe_group(model, g) for g in graph.groups]
    params = sum(p.numel() for p in model.parameters())  # a tied parameter once
    from ..structured.layers import find_layer_stacks

    stacks = [(s.name, s.size, dict(s.kept)) for s in find_layer_stacks(model)]
    return ModelDescription(type(model).__name__, int(params), _shapes(example_inputs), groups,
                            sorted(graph.prop.opaque.items()), stacks)


def _describe_group(model: nn.Module, g) -> GroupInfo:
    rows = member_rows(model, g)
    left = set()
    for member in g.members:  # the reasons describe_groups gives: the group's, else each frozen atom's
        if g.reason is not None:
            left.add((member.axis.module, g.reason))
        else:
            frozen = sorted({g.frozen[a] for a in member.atoms.tolist() if a in g.frozen})
            if frozen:
                left.add((member.axis.module, frozen[0]))
    units = int(len(g.atoms))
    kind, head_dim, query_heads = _classify(model, rows, units, set(g.frozen.values()))
    if kind == "other" and not g.producers():  # only raw parameters (a position table) make this dim
        kind = "positions"
    producers = sorted({m for m, _, axis, _ in rows if axis in PRODUCERS})
    return GroupInfo(g.index, kind, units, int(len(g.prunable)), _common_prefix([m for m, *_ in rows]), producers,
                     rows, head_dim, query_heads, sorted(left))


def _classify(model: nn.Module, rows, units: int, frozen_reasons: set) -> Tuple[str, Optional[int], Optional[int]]:
    """``(kind, head_dim, query_heads)`` of a group from its members (module, type, axis, positions) and the
    reasons its frozen units carry."""
    handlers = {m: handler_for(model.get_submodule(m) if m else model) for m, *_ in rows}
    linear = [(m, axis, n) for m, _, axis, n in rows
              if isinstance(handlers[m], LinearHandler) and axis in ("in", "out")]
    readers = {m for m, _, axis, _ in rows if axis not in PRODUCERS}
    # a layer that also reads the group's channels (a depthwise conv) passes them on; the others write them
    writers = sorted({m for m, _, axis, _ in rows if axis in PRODUCERS and m not in readers})
    heads = _heads(handlers, rows, linear, units)
    if heads is not None:
        return heads
    if not writers:
        return "other", None, None
    if not readers and frozen_reasons == {OUTPUT_REASON}:
        return "output", None, None  # no layer of the model reads these channels: the model's output
    if any(isinstance(handlers[m], EmbeddingHandler) for m in writers) \
            or len({m.rpartition(".")[0] for m in writers}) > 1:
        return "hidden", None, None  # an embedding writes it, or several branches add into it: a residual stream
    if any(isinstance(handlers[m], ConvHandler) for m in writers):
        return "conv", None, None
    if len(linear) == len(rows) and readers:
        if _NUMBER.search(_common_prefix([m for m, *_ in rows])):
            return "ffn", None, None  # Linear layers inside one numbered block: the block's MLP
        return "linear", None, None
    return "other", None, None


def _heads(handlers, rows, linear, units: int) -> Optional[Tuple[str, int, int]]:
    """Heads when a Linear produces several channels per unit (a head of ``head_dim``), or an
    ``nn.MultiheadAttention`` holds the group. ``head_dim`` is the fewest channels a Linear member has per unit
    (a key / value projection; a fused q-k-v projection has three heads' worth); the attention output's consumer
    reads every query head, so its channels per unit over ``head_dim`` are the query heads per unit (> 1:
    grouped-query attention)."""
    if units == 0:
        return None
    mha = [n // units for m, _, axis, n in rows if isinstance(handlers[m], MultiheadAttentionHandler)
           and axis == "embed" and n % units == 0]
    if mha:
        return "heads", mha[0], units
    per = {(m, axis): n // units for m, axis, n in linear if n % units == 0}
    if len(per) != len(linear) or not any(axis == "out" and k > 1 for (_, axis), k in per.items()):
        return None
    head_dim = min(per.values())
    consumers = [k for (_, axis), k in per.items() if axis == "in"]
    per_unit = max(consumers) // head_dim if consumers and max(consumers) % head_dim == 0 else 1
    return ("kv_groups" if per_unit > 1 else "heads"), head_dim, units * per_unit


def _common_prefix(names: Sequence[str]) -> str:
    parts = [n.split(".") if n else [] for n in names]
    if not parts:
        return ""
    out = []
    for column in zip(*parts):
        if len(set(column)) != 1:
            break
        out.append(column[0])
    return ".".join(out)


def _shapes(inputs) -> Dict[str, List[int]]:
    args, kwargs = split_inputs(inputs)
    named = {f"arg{i}": a for i, a in enumerate(args)}
    named.update(kwargs)
    return {k: list(v.shape) for k, v in named.items() if isinstance(v, torch.Tensor)}


# ---- inputs and loading ------------------------------------------------------------------------------------
def config_inputs(model: nn.Module, seq_len: int = 16, image_size: Optional[int] = None) -> Dict[str, torch.Tensor]:
    """One example built from ``model.config``: ``input_ids`` (1, seq_len) below ``vocab_size`` for a text model
    (plus ``decoder_input_ids`` for an encoder-decoder), ``pixel_values`` (1, C, H, W) from ``num_channels`` and
    ``image_size`` (or the ``image_size`` given) for a vision model, as the model's ``main_input_name`` says."""
    config = getattr(model, "config", None)
    if config is None:
        raise ConfigError(f"{type(model).__name__} has no config to build example inputs from; pass example_inputs")
    if isinstance(seq_len, bool) or not isinstance(seq_len, int) or seq_len < 1:
        raise ConfigError(f"seq_len must be a positive int, got {seq_len!r}")
    main = getattr(model, "main_input_name", "input_ids")
    if main == "pixel_values":
        size = image_size if image_size is not None else getattr(config, "image_size", None) or 224
        h, w = (size, size) if isinstance(size, int) else tuple(size)[:2]
        channels = int(getattr(config, "num_channels", 3) or 3)
        return {"pixel_values": torch.randn(1, channels, int(h), int(w), generator=torch.Generator().manual_seed(0))}
    if main != "input_ids":
        raise ConfigError(f"{type(model).__name__} reads {main!r}; example inputs are built for input_ids and "
                          "pixel_values only: pass example_inputs")
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(vocab, int) or vocab < 1:
        raise ConfigError(f"{type(model).__name__}'s config has no vocab_size to draw token ids from; "
                          "pass example_inputs")
    ids = torch.randint(0, vocab, (1, seq_len), generator=torch.Generator().manual_seed(0))
    inputs = {"input_ids": ids}
    if getattr(config, "is_encoder_decoder", False):
        inputs["decoder_input_ids"] = ids.clone()
    return inputs


def is_model_path(path: Union[str, Path]) -> bool:
    """Whether ``path`` names a Hugging Face model: a folder with ``config.json``, or a ``.json`` file holding a
    transformers config (a ``model_type`` key)."""
    path = Path(path)
    if path.is_dir():
        return (path / "config.json").is_file()
    if not (path.is_file() and path.suffix == ".json"):
        return False
    try:  # a JSON recipe is not a config: a config names its model_type
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(data, dict) and "model_type" in data


def load_model(path: Union[str, Path]) -> nn.Module:
    """The model a folder holds (``save_pretrained`` of ``transformers`` or of :mod:`prunekit.hf`), or one built
    with random weights from a ``config.json`` file, in eval mode; offline (local files only). The class is
    the config's ``architectures`` entry looked up among ``transformers``' own model classes (``AutoModel``'s
    choice for the model type when the config names none): nothing a file names is imported."""
    from . import META_FILE, from_pretrained

    path = Path(path)
    if not is_model_path(path):
        raise ConfigError(f"{path} is not a Hugging Face model folder (a folder with config.json) or a .json "
                          "transformers config file (with a model_type key)")
    transformers = _transformers()
    if path.is_dir() and (path / META_FILE).exists():
        return from_pretrained(path)  # a prunekit save: the plan replayed on the dense architecture
    config_file = path / "config.json" if path.is_dir() else path
    try:
        data = json.loads(config_file.read_text())
        config = transformers.AutoConfig.for_model(**data) if isinstance(data, dict) and "model_type" in data \
            else None
    except (OSError, ValueError, TypeError, KeyError) as exc:
        raise CheckpointError(f"{config_file} is not a readable transformers config ({type(exc).__name__}: {exc})") \
            from None
    if config is None:
        raise CheckpointError(f"{config_file} has no model_type; it is not a transformers config")
    names = getattr(config, "architectures", None) or []
    cls = _model_class(names[0], config_file) if names else None
    if path.is_dir():
        try:
            return (cls or transformers.AutoModel).from_pretrained(str(path), local_files_only=True).eval()
        except OSError as exc:  # no weights in the folder (a config saved alone), or unreadable ones
            raise CheckpointError(f"{path} holds no loadable weights ({' '.join(str(exc).split())[:200]}); to "
                                  f"inspect the architecture alone, pass the config file {config_file}") from None
    if cls is None:
        return transformers.AutoModel.from_config(config).eval()
    return cls(config).eval()


def _transformers():
    try:
        import transformers
    except ImportError:  # pragma: no cover - transformers is a test dependency
        raise ConfigError("prunekit.hf needs the `transformers` package (pip install transformers)") from None
    return transformers


def _model_class(name: Any, source: Path) -> type:
    transformers = _transformers()
    cls = getattr(transformers, name, None) if isinstance(name, str) and name.isidentifier() else None
    if not (isinstance(cls, type) and issubclass(cls, transformers.PreTrainedModel)
            and cls.__module__.startswith("transformers.models.")):
        raise CheckpointError(f"{source} names the architecture {name!r}, which is not a transformers model class "
                              "(custom code is never imported); build the model in Python and call "
                              "prunekit.hf.describe_model(model)")
    return cls
