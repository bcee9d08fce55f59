"""The pruning request: one typed :class:`PruneSpec`, and the part of it each granularity uses.

``prunekit.prune(model, x, spec=None, **fields)``, ``prunekit.plan(...)``, a recipe's ``prune:`` section
and every schedule / search round build the same :class:`PruneSpec`, so a keyword argument and a recipe
key are one thing with one default. Each field declares the granularities that use it; the part of a
spec a granularity reads is a frozen dataclass generated from those declarations (:data:`PARTS`),
so the implementations cannot read an option their granularity does not take, and :data:`PRUNE_OPTIONS`
(the table of what each granularity accepts) is derived from the same declarations.

A field the chosen granularity does not use, set to anything but its default, is a :class:`ConfigError`
naming it; an unknown field is a :class:`ConfigError` listing the allowed ones.
"""
from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field
from typing import Any, Dict, Literal, Mapping, Optional, Tuple, Union

from .errors import ConfigError, PruningError

GRANULARITIES = ("weight", "channel", "block", "input")
ALL = GRANULARITIES
STRUCTURED = ("channel", "block", "input")

BLOCK_CRITERIA = ("residual_norm", "random")
"""What block pruning ranks by: ``residual_norm`` (||f(x)|| / ||x|| on the calibration inputs, lowest first) or
``random`` (seeded)."""

DEFAULT_CRITERION = {"weight": "l1", "channel": "l1", "block": "residual_norm", "input": "l1"}
"""The criterion a spec uses when ``criterion`` is not given."""


def _f(default: Any, used_by: Tuple[str, ...], doc: str, factory: bool = False):
    meta = {"used_by": used_by, "doc": doc}
    if factory:
        return field(default_factory=default, metadata=meta)
    return field(default=default, metadata=meta)


@dataclass
class PruneSpec:
    """What to prune and how; every field is also a keyword of ``prunekit.prune`` / ``prunekit.plan``.

    Module patterns (``include``, ``exclude``, ``ignore``, ``freeze``, ``layer_ratios`` keys, ``leaf_modules``)
    follow :mod:`prunekit.match`: exact name, glob, dotted prefix, class name, type or module.
    """

    granularity: Literal["weight", "channel", "block", "input"] = _f(
        "weight", ALL, "weight: mask single weights; channel: remove coupled channels / heads; block: remove "
        "transformer layers (HF models) or replace residual blocks by identity; input: drop input features of the first Linear")
    criterion: Any = _f(None, ALL, "importance criterion: a registered name, a Criterion or a callable; "
                                   "None: l1 (weight, channel, input) / residual_norm (block)")
    ratio: Optional[float] = _f(0.5, ALL, "fraction to remove, in [0, 1)")
    seed: Optional[int] = _f(None, ALL, "seed of the random criterion (None: 0; a recipe uses the run's seed)")
    calibration_batches: int = _f(8, ALL, "most calibration batches a data-driven criterion reads")
    threshold: Optional[float] = _f(None, ("weight",), "keep weights whose score > threshold, instead of a ratio")
    scope: Optional[Literal["global", "local", "row"]] = _f(
        None, ("weight", "channel"), "global: one ranking across layers; local: the ratio in every layer; row "
                                     "(weight only): the ratio in every output row; None: the criterion's default "
                                     "(global; wanda: row; sparsegpt: local)")
    relative_to: Literal["remaining", "total"] = _f("remaining", ("weight",),
                                                    "ratio of the weights still alive, or of all weights")
    layer_ratios: Optional[Dict[Any, float]] = _f(None, ("weight", "channel"), "module pattern -> ratio")
    pattern: Optional[str] = _f(None, ("weight",), "'N:M' (e.g. '2:4'): keep N of every M consecutive weights along "
                                                  "each row's input dimension (NVIDIA's convention; implies "
                                                  "ratio = 1 - N/M)")
    blocks: Optional[str] = _f(None, ("weight", "channel"), "calibrate block by block: 'auto' (the model's "
                                                            "nn.ModuleList of repeated layers) or its dotted name "
                                                            "('model.layers'); None: whole-model forwards "
                                                            "(prunekit.importance.sequential)")
    max_memory: Optional[Union[int, str]] = _f(
        None, ("weight", "channel"), "with blocks: the most bytes of cached block inputs / outputs kept in memory (an "
                                     "int or '2GB'), the rest spilled to a temporary folder; None: no bound")
    block_inputs: Optional[Literal["pruned", "dense"]] = _f(
        None, ("weight", "channel"), "with blocks: calibrate each block on the outputs of the already-pruned ones, or "
                                     "of the dense model (prunekit.unstructured.sequential); None: pruned (weight) / "
                                     "dense (channel, which chooses its plan after every statistic is gathered)")
    include: Any = _f(None, ("weight", "channel", "block"), "only these modules (channel: groups they produce)")
    exclude: Any = _f(None, ("weight", "channel", "block"),
                      "never these modules (channel / block: the same as ignore)")
    include_types: Any = _f(None, ("weight", "channel"), "layer types pruned (classes or names); None: Linear, Conv*")
    ignore: Any = _f(None, ("channel", "block"),
                     "modules whose outputs are kept: their input channels may still be pruned as consumers")
    freeze: Any = _f(None, ("channel", "block"), "modules left entirely untouched: every group touching them is kept")
    macs_target: Optional[float] = _f(None, ("channel",), "keep this fraction (<= 1) or count (> 1) of MACs instead "
                                                          "of a ratio")
    latency_target: Optional[Union[float, str]] = _f(
        None, ("channel",), "keep this fraction (in (0, 1]) of the model's measured latency, or an absolute time as a "
                            "string ('12ms'), instead of a ratio; measured on this machine at the example inputs' "
                            "shapes and the current thread count (prunekit.structured.latency)")
    latency_batch: Optional[int] = _f(None, ("channel",), "latency_target is measured at this batch size (None: the "
                                                          "example inputs')")
    latency_threads: Optional[int] = _f(None, ("channel",), "latency_target is measured at this many torch threads "
                                                            "(None: torch.get_num_threads())")
    latency_checks: Optional[int] = _f(None, ("channel",), "latency_target: the pruned model is timed against the "
                                                           "dense one and the allocation re-aimed when it misses the "
                                                           "target by over 5%, up to this many times (None: 2; 0: "
                                                           "trust the latency table)")
    latency_allocation: Literal["scores", "measured"] = _f(
        "scores", ("channel",), "latency_target: how removals are ranked across groups: 'scores' (the criterion's, "
                                "normalised per layer) or 'measured' (each group cut alone to each candidate width "
                                "and run on the calibration batches: loss_fn's growth, or the outputs' relative "
                                "change; needs calibration)")
    round_to: Optional[int] = _f(None, ("channel",), "kept channels per group rounded up to a multiple of this")
    layer_floor: Optional[float] = _f(None, ("channel",), "every group keeps at least this fraction (global scope "
                                                          "and latency_target; None: 0.1, and with latency_target "
                                                          "the highest of 0.5 / 0.4 / 0.25 / 0.1 that reaches it)")
    uniform: bool = _f(False, ("channel",), "remove the same number of channels / heads from every layer of a kind "
                                            "(layers whose names differ only in block numbers): every block keeps "
                                            "the same widths, so a Hugging Face config can describe the model")
    reduction: Literal["mean", "sum", "max", "prod"] = _f("mean", ("channel",), "how a group's per-layer scores "
                                                                                "combine")
    normalize: Literal["mean", "max", "sum", "none"] = _f("mean", ("channel",), "per-layer score normalisation "
                                                                                "before combining")
    leaf_modules: Any = _f(tuple, STRUCTURED, "modules the tracer keeps whole (not traced into)", factory=True)
    tracer: Literal["auto", "fx", "export"] = _f("auto", STRUCTURED, "graph capture: auto (fx, then torch.export) | "
                                                                     "fx | export")

    # --- building -------------------------------------------------------------------------------------

    @classmethod
    def from_fields(cls, spec: Optional["PruneSpec"] = None, caller: str = "prunekit.prune", **fields) -> "PruneSpec":
        """``spec`` (or the defaults) with ``fields`` replaced, validated; unknown names are a ConfigError."""
        names = field_names()
        unknown = [k for k in fields if k not in names]
        granularity = fields.get("granularity", spec.granularity if spec is not None else "weight")
        if unknown:
            parts = []
            for k in unknown:
                close = difflib.get_close_matches(k, names, n=1, cutoff=0.6)
                parts.append(f"{k!r}" + (f" (did you mean {close[0]!r}?)" if close else ""))
            allowed = PRUNE_OPTIONS.get(granularity, names)
            raise ConfigError(f"{caller} got unknown option{'s' if len(unknown) > 1 else ''} {', '.join(parts)}; "
                              f"options for granularity={granularity!r}: granularity, {', '.join(sorted(allowed))}")
        if spec is not None and not isinstance(spec, PruneSpec):
            raise ConfigError(f"{caller}: spec must be a prunekit.PruneSpec (or None), got {type(spec).__name__}; "
                              "pass options as keywords or build PruneSpec(...)")
        out = dataclasses.replace(spec, **fields) if spec is not None else cls(**fields)
        out.validate(caller)
        return out

    def validate(self, caller: str = "prunekit.prune") -> None:
        """Check the granularity, that only options it uses are set, and every value."""
        if self.granularity not in GRANULARITIES:
            raise PruningError(f"granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")
        unused = [f.name for f in dataclasses.fields(self)
                  if self.granularity not in f.metadata["used_by"] and _is_set(getattr(self, f.name), _default(f))]
        if unused:
            lines = "; ".join(_unused_message(k, getattr(self, k), self.granularity) for k in unused)
            raise ConfigError(f"{lines}. {_WHAT[self.granularity]}; it takes: "
                              f"{', '.join(sorted(PRUNE_OPTIONS[self.granularity]))}. Remove the option or choose the "
                              "granularity it belongs to")
        _check_values(self)

    # --- reading --------------------------------------------------------------------------------------

    @property
    def criterion_or_default(self) -> Any:
        return DEFAULT_CRITERION[self.granularity] if self.criterion is None else self.criterion

    @property
    def scope_or_default(self) -> str:
        """``scope``, or when unset the criterion's ``default_scope`` (weight pruning) / ``"global"`` (channel)."""
        if self.scope is not None:
            return self.scope
        if self.granularity != "weight":
            return "global"
        return getattr(_criterion_class(self.criterion_or_default), "default_scope", "global")

    @property
    def block_inputs_or_default(self) -> str:
        """``block_inputs``, or when unset ``"pruned"`` (weight pruning) / ``"dense"`` (channel pruning)."""
        if self.block_inputs is not None:
            return self.block_inputs
        return "pruned" if self.granularity == "weight" else "dense"

    def part(self):
        """The frozen part of this spec its granularity uses (:data:`PARTS`), with defaults resolved."""
        cls = PARTS[self.granularity]
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(cls)}
        values["criterion"] = self.criterion_or_default
        values["seed"] = 0 if self.seed is None else int(self.seed)
        if "scope" in values:
            values["scope"] = self.scope_or_default
        if "block_inputs" in values:
            values["block_inputs"] = self.block_inputs_or_default
        return cls(**values)

    def given(self) -> Dict[str, Any]:
        """The fields that differ from their defaults (what a user wrote), JSON-able where the values are."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                if f.name == "granularity" or _is_set(getattr(self, f.name), _default(f))}


def field_names() -> Tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(PruneSpec))


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory()  # type: ignore[misc]


def _is_set(value: Any, default: Any) -> bool:
    """An option counts as given when it is not None, not empty, and not its default value."""
    if value is None:
        return False
    if isinstance(value, (list, tuple, dict, set)) and len(value) == 0:
        return False
    try:
        return not bool(value == default)
    except Exception:  # e.g. a tensor compared with a scalar: it was given on purpose
        return True


def _make_part(granularity: str):
    fields = [(f.name, Any) for f in dataclasses.fields(PruneSpec)
              if granularity in f.metadata["used_by"] and f.name != "granularity"]
    cls = dataclasses.make_dataclass(f"{granularity.capitalize()}Part", fields, frozen=True)
    cls.__doc__ = (f"The options granularity={granularity!r} uses, read from a PruneSpec by PruneSpec.part(): "
                   f"{', '.join(n for n, _ in fields)}.")
    cls.__module__ = __name__
    return cls


WeightPart = _make_part("weight")
ChannelPart = _make_part("channel")
BlockPart = _make_part("block")
InputPart = _make_part("input")
PARTS = {"weight": WeightPart, "channel": ChannelPart, "block": BlockPart, "input": InputPart}

PRUNE_OPTIONS: Dict[str, Tuple[str, ...]] = {
    g: tuple(f.name for f in dataclasses.fields(PruneSpec) if g in f.metadata["used_by"] and f.name != "granularity")
    for g in GRANULARITIES
}
"""The options (besides ``granularity``) each granularity uses, derived from :class:`PruneSpec`'s fields."""

_WHAT = {
    "weight": "granularity='weight' masks individual weights",
    "channel": "granularity='channel' removes whole channels",
    "block": "granularity='block' removes the lowest-ranked transformer layers (a model with a config) or identity-skip "
             "residual blocks (replaced by nn.Identity)",
    "input": "granularity='input' removes input columns of the first Linear layer (the one reading the model input)",
}


def _unused_message(name: str, value: Any, granularity: str) -> str:
    users = [g for g, opts in PRUNE_OPTIONS.items() if name in opts]
    if name == "pattern":
        return (f"pattern={value!r} is an N:M weight-sparsity pattern: it applies to weight pruning only "
                "(granularity='weight'), which masks single weights")
    if name == "threshold":
        return ("threshold applies to weight pruning (granularity='weight'); structured pruning takes ratio "
                "or macs_target")
    if granularity == "weight":
        return (f"{name}={value!r} applies to structured pruning only (granularity={' / '.join(map(repr, users))}); "
                "for weights use include/exclude and ratio/threshold")
    return f"{name}={value!r} is not used by granularity={granularity!r} (only by {' / '.join(map(repr, users))})"


def _ratio(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= float(value) < 1.0:
        raise PruningError(f"{what} must be a number in [0, 1) (the fraction to remove), got {value!r}")


def _check_values(spec: PruneSpec) -> None:
    g = spec.granularity
    if spec.ratio is None:
        if g == "weight" and spec.threshold is None:
            raise PruningError("give either ratio (fraction of weights to remove) or threshold")
        if g == "channel" and spec.macs_target is None and spec.latency_target is None:
            raise PruningError("give ratio (fraction of channels to remove), macs_target (fraction of MACs to keep) or "
                               "latency_target (fraction of the measured latency to keep)")
        if g in ("block", "input"):
            raise PruningError(f"granularity={g!r} needs ratio (the fraction to remove)")
    elif spec.threshold is None:
        _ratio(spec.ratio, "ratio")
    if spec.threshold is not None and (isinstance(spec.threshold, bool) or not isinstance(spec.threshold, (int, float))
                                       or spec.threshold < 0):
        raise PruningError(f"threshold must be a non-negative number (keep weights whose score > threshold), "
                           f"got {spec.threshold!r}")
    if spec.scope is not None:
        allowed = ("global", "local", "row") if g == "weight" else ("global", "local")
        if spec.scope not in allowed:
            choices = ", ".join(map(repr, allowed[:-1])) + f" or {allowed[-1]!r}"
            extra = " ('row' is weight pruning only)" if spec.scope == "row" else ""
            raise ConfigError(f"scope must be {choices}, got {spec.scope!r}{extra}")
    for name, allowed in (("relative_to", ("remaining", "total")),
                          ("reduction", ("mean", "sum", "max", "prod")), ("normalize", ("mean", "max", "sum", "none")),
                          ("tracer", ("auto", "fx", "export")), ("latency_allocation", ("scores", "measured"))):
        if getattr(spec, name) not in allowed:
            choices = ", ".join(map(repr, allowed[:-1])) + f" or {allowed[-1]!r}"
            raise ConfigError(f"{name} must be {choices}, got {getattr(spec, name)!r}")
    if spec.layer_ratios is not None:
        if not isinstance(spec.layer_ratios, Mapping):
            raise PruningError(f"layer_ratios must be a dict {{module pattern: ratio}}, got "
                               f"{type(spec.layer_ratios).__name__}")
        for pat, r in spec.layer_ratios.items():
            _ratio(r, f"layer_ratios[{pat!r}]")
    if spec.macs_target is not None and (isinstance(spec.macs_target, bool)
                                         or not isinstance(spec.macs_target, (int, float)) or spec.macs_target <= 0):
        raise PruningError(f"macs_target must be a positive fraction (<= 1) or an absolute MAC count, "
                           f"got {spec.macs_target!r}")
    if g == "channel" and (any(getattr(spec, k) is not None for k in ("latency_target", "latency_batch",
                                                                      "latency_threads", "latency_checks"))
                           or spec.latency_allocation != "scores"):
        from .structured.latency import check_spec

        check_spec(spec)
    if spec.round_to is not None and (isinstance(spec.round_to, bool) or not isinstance(spec.round_to, int)
                                      or spec.round_to < 1):
        raise PruningError(f"round_to must be a positive integer, got {spec.round_to!r}")
    if spec.layer_floor is not None and (isinstance(spec.layer_floor, bool)
                                         or not isinstance(spec.layer_floor, (int, float))
                                         or not 0 <= spec.layer_floor < 1):
        raise PruningError(f"layer_floor must be a fraction in [0, 1), got {spec.layer_floor!r}")
    if isinstance(spec.calibration_batches, bool) or not isinstance(spec.calibration_batches, int) \
            or spec.calibration_batches < 1:
        raise ConfigError(f"calibration_batches must be a positive integer, got {spec.calibration_batches!r}")
    if spec.seed is not None and (isinstance(spec.seed, bool) or not isinstance(spec.seed, int)):
        raise ConfigError(f"seed must be an integer, got {spec.seed!r}")
    from .match import as_patterns

    for name in ("include", "exclude", "ignore", "freeze", "leaf_modules"):
        as_patterns(getattr(spec, name), name)
    _check_criterion(spec)
    if g == "weight":
        _check_weight_criterion(spec)
        _check_pattern(spec)
    if g in ("weight", "channel"):
        _check_blocks(spec)


def _criterion_class(crit: Any) -> Any:
    """The class whose attributes (``default_scope``, ``scopes``, ``reconstructs``) describe ``crit``, or None."""
    if isinstance(crit, str):
        from .importance import CRITERIA

        return CRITERIA.find(crit)
    return crit if isinstance(crit, type) else type(crit)


def _check_weight_criterion(spec: PruneSpec) -> None:
    cls = _criterion_class(spec.criterion_or_default)
    name = getattr(cls, "name", spec.criterion_or_default)
    scopes = getattr(cls, "scopes", ("global", "local", "row"))
    if spec.scope is not None and spec.scope not in scopes:
        raise ConfigError(f"criterion {name!r} compares weights with scope {' / '.join(map(repr, scopes))}, not "
                          f"scope={spec.scope!r}" + (": it prunes one layer after the other, each to its own ratio; "
                                                     "leave scope unset" if getattr(cls, "reconstructs", False) else ""))
    if getattr(cls, "reconstructs", False) and spec.threshold is not None:
        raise ConfigError(f"criterion {name!r} reconstructs each layer to a ratio; threshold={spec.threshold!r} is not "
                          "supported with it (give ratio or pattern)")


def _check_blocks(spec: PruneSpec) -> None:
    """``blocks`` / ``max_memory`` / ``block_inputs``: valid values, and only where block-by-block calibration runs."""
    from .importance.activation_cache import parse_memory
    from .importance.base import DATA_NEEDS, GRADIENTS

    parse_memory(spec.max_memory)
    if spec.block_inputs not in (None, "pruned", "dense"):
        raise ConfigError(f"block_inputs must be 'pruned' or 'dense' (or None: the granularity's default), got "
                          f"{spec.block_inputs!r}")
    if spec.blocks is None:
        for key in ("max_memory", "block_inputs"):
            if _is_set(getattr(spec, key), PruneSpec.__dataclass_fields__[key].default):
                raise ConfigError(f"{key}={getattr(spec, key)!r} applies to block-by-block calibration: set "
                                  "blocks='auto' (or the dotted name of the model's list of layers) as well")
        return
    if not isinstance(spec.blocks, str) or not spec.blocks.strip():
        raise ConfigError(f"blocks must be 'auto' or the dotted name of the model's list of layers (e.g. "
                          f"'model.layers'), got {spec.blocks!r}")
    cls = _criterion_class(spec.criterion_or_default)
    name = getattr(cls, "name", spec.criterion_or_default)
    needs = frozenset(getattr(cls, "needs", ())) & DATA_NEEDS
    served = "wanda / sparsegpt" if spec.granularity == "weight" else "activation / apoz"
    if not needs:
        raise ConfigError(f"blocks={spec.blocks!r} calibrates a data-driven criterion block by block; criterion "
                          f"{name!r} reads no calibration data: remove blocks (or choose {served})")
    if GRADIENTS in needs:
        raise ConfigError(f"criterion {name!r} reads gradients, whose backward runs through the whole model: "
                          f"block-by-block calibration (blocks=...) serves {served}; remove blocks")
    if spec.granularity == "channel":
        if spec.block_inputs == "pruned":
            raise ConfigError("block_inputs='pruned' is weight pruning's: channel pruning chooses its plan after "
                              "every statistic is gathered, so each block is calibrated on the dense model's "
                              "outputs; leave block_inputs unset (or 'dense')")
        return
    local = getattr(cls, "reconstructs", False) or spec.pattern is not None or spec.threshold is not None
    if spec.block_inputs_or_default == "pruned" and not local and spec.scope_or_default == "global":
        raise ConfigError(f"block_inputs='pruned' prunes each block before the next is calibrated, so criterion "
                          f"{name!r} must decide layer by layer: scope='local' or 'row' (or a pattern / threshold); "
                          "or block_inputs='dense' for one global ranking")


def _check_pattern(spec: PruneSpec) -> None:
    if spec.pattern is None:
        return
    from .unstructured.nm import parse_pattern, pattern_sparsity

    n, m = parse_pattern(spec.pattern)
    implied = pattern_sparsity(n, m)
    what = f"pattern={spec.pattern!r} keeps {n} of every {m} weights, so it fixes the sparsity at {implied:g}"
    if spec.threshold is not None:
        raise ConfigError(f"{what}; threshold={spec.threshold!r} contradicts it: give one of them")
    if _is_set(spec.ratio, PruneSpec.__dataclass_fields__["ratio"].default) and abs(float(spec.ratio) - implied) > 1e-9:
        raise ConfigError(f"{what}; ratio={spec.ratio!r} contradicts it: leave ratio unset (or {implied:g})")
    for key in ("scope", "layer_ratios"):
        if _is_set(getattr(spec, key), None):
            raise ConfigError(f"{what} in every group; {key}={getattr(spec, key)!r} does not apply with a pattern: "
                              "remove it (exclude layers that must stay dense)")
    if spec.relative_to != "remaining":
        raise ConfigError(f"{what}; relative_to={spec.relative_to!r} does not apply with a pattern: remove it")


def _check_criterion(spec: PruneSpec) -> None:
    crit = spec.criterion
    if spec.granularity == "block":
        name = crit if isinstance(crit, str) else getattr(crit, "name", None)
        if crit is not None and name not in BLOCK_CRITERIA:
            raise ConfigError(f"granularity='block' ranks residual blocks by {' or '.join(map(repr, BLOCK_CRITERIA))}; "
                              f"criterion={crit!r} is not implemented for blocks (leave criterion unset for "
                              "residual_norm)")
        return
    if crit is None or not isinstance(crit, str):
        if crit is not None and not callable(crit) and not hasattr(crit, "weight_scores"):
            raise ConfigError(f"criterion must be a registered name, a Criterion or a callable, got {crit!r}")
        return
    from .importance import CRITERIA

    if crit not in CRITERIA:
        close = difflib.get_close_matches(crit, CRITERIA.names(), n=1, cutoff=0.5)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown criterion {crit!r}{hint}; registered criteria: {', '.join(CRITERIA.names())}")
    cls = CRITERIA.get(crit)
    if spec.granularity != "weight" and ("inputs" in getattr(cls, "needs", ()) or getattr(cls, "reconstructs", False)):
        raise ConfigError(f"criterion {crit!r} scores single weights from each layer's inputs: it is weight pruning "
                          f"only (granularity='weight'), not granularity={spec.granularity!r}")
