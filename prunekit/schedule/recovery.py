"""``Recovery``: what every schedule and search does to a model, as four callables (prune, fine-tune, evaluate, measure)."""
from __future__ import annotations

from dataclasses import dataclass, fields, replace
from typing import Any, Callable, Dict, List, Optional, Tuple

from torch import nn

from ..errors import ConfigError
from ..progress import Progress

PARTS = ("prune", "finetune", "evaluate", "measure")  # the four required callables
GRANULARITIES = ("weight", "channel")  # what a ratio schedule can prune
_OWN_KEYWORDS = ("granularity", "criterion", "ratio", "relative_to", "inplace", "layer_ratios")  # set per call


@dataclass(frozen=True)
class Recovery:
    """The callables a schedule or search runs, and what ``prune`` removes.

    * ``prune(model, *, total, step, inplace=False) -> model``: prune to the cumulative ratio
      ``total``; ``step`` is the share of what is left removed now (weight pruning uses ``total``,
      channel pruning of the already smaller model uses ``step``). AGP calls it with
      ``inplace=True`` and needs the model changed in place (the optimiser holds its parameters).
    * ``finetune(model) -> FitResult | None``: recovery training in place; returns what it trained
      (a :class:`prunekit.train.FitResult`: ``.history`` rows, ``.interrupted``) or None if it did not train.
    * ``evaluate(model) -> dict``: validation metrics including ``accuracy`` (the budget is judged on it).
    * ``measure(model) -> dict``: size (``params``, ``nonzero_params``, ``macs``, ``nonzero_macs``,
      ``latency_ms`` when timed).
    * ``granularity``: ``"weight"`` or ``"channel"``, what ``prune`` removes.
    * ``prune_layers(model, {layer: ratio}) -> model`` (optional): one ratio per named layer, every
      other layer untouched; :func:`prunekit.search.sensitivity` and ``layerwise_search`` need it.

    :meth:`default` builds the usual parts; :meth:`with_` returns a copy with some parts replaced
    (``Recovery.default(data, x).with_(evaluate=my_fn)``). Parts are checked on construction.
    """

    prune: Callable[..., nn.Module]
    finetune: Callable[[nn.Module], Any]
    evaluate: Callable[[nn.Module], dict]
    measure: Callable[[nn.Module], dict]
    granularity: str = "weight"
    prune_layers: Optional[Callable[[nn.Module, Dict[str, float]], nn.Module]] = None

    def __post_init__(self):
        for part in PARTS:
            if not callable(getattr(self, part)):
                raise ConfigError(f"Recovery.{part} must be callable, got {type(getattr(self, part)).__name__}; "
                                  f"pass a function (see help(Recovery) for its signature) or keep the default part")
        if self.prune_layers is not None and not callable(self.prune_layers):
            raise ConfigError(f"Recovery.prune_layers must be callable or None, got {type(self.prune_layers).__name__}")
        if self.granularity not in GRANULARITIES:
            raise ConfigError(f"Recovery.granularity must be one of {', '.join(GRANULARITIES)}, got {self.granularity!r}")

    @classmethod
    def default(cls, data, example_inputs, *, granularity: str = "weight", criterion=None,
                prune_kwargs: Optional[dict] = None, finetune=None, loss_fn: Optional[Callable] = None,
                teacher: Optional[nn.Module] = None, distill=None, measure_latency: bool = False,
                progress: Optional[Progress] = None, stage: str = "recovery") -> "Recovery":
        """``prunekit.prune`` (``criterion``, None: the PruneSpec default, and ``prune_kwargs``; weights relative to the total, pruned
        weights stay pruned), :class:`FitFinetune` with ``finetune`` (a FitConfig; None = no fine-tune;
        ``distill`` + ``teacher`` distil), validation metrics of ``data`` and ``prunekit.measure``
        (timed at batch 1 with ``measure_latency``). ``stage`` labels the fit history rows.
        ``data=None`` leaves evaluate (and a configured fine-tune) to be replaced with :meth:`with_`.
        """
        clash = sorted(set(prune_kwargs or {}) & set(_OWN_KEYWORDS))
        if clash:
            raise ConfigError(f"Recovery.default: prune_kwargs may not set {', '.join(clash)}; granularity and criterion "
                              "are keywords of their own and the schedule chooses the ratio of every call")
        if granularity not in GRANULARITIES:
            raise ConfigError(f"Recovery.default: granularity must be one of {', '.join(GRANULARITIES)}, got {granularity!r}")
        return cls(prune=default_prune_fn(example_inputs, granularity, criterion=criterion, **(prune_kwargs or {})),
                   finetune=FitFinetune(data, finetune, loss_fn=loss_fn, teacher=teacher, distill=distill,
                                        example_inputs=example_inputs, progress=progress, stage=stage),
                   evaluate=default_evaluate_fn(data, loss_fn) if data is not None else _without_data("evaluate"),
                   measure=default_measure_fn(example_inputs, measure_latency), granularity=granularity,
                   prune_layers=default_prune_layers_fn(example_inputs, granularity, criterion=criterion))

    def with_(self, **parts) -> "Recovery":
        """A copy with the named parts replaced (validated like the original)."""
        names = [f.name for f in fields(self)]
        unknown = sorted(set(parts) - set(names))
        if unknown:
            raise ConfigError(f"Recovery has no part {', '.join(map(repr, unknown))}; its parts are {', '.join(names)}")
        return replace(self, **parts)


def check_recovery(recovery, where: str) -> "Recovery":
    """``recovery`` itself, or a ConfigError saying how to build one."""
    if not isinstance(recovery, Recovery):
        raise ConfigError(f"{where} takes a prunekit.schedule.Recovery as its second argument, got "
                          f"{type(recovery).__name__}; build one with Recovery.default(data, example_inputs, ...)")
    return recovery


def run_finetune(recovery: Recovery, model: nn.Module) -> Tuple[List[dict], bool]:
    """Fine-tune ``model``; returns (the fit history rows, whether training was interrupted)."""
    res = recovery.finetune(model)
    if res is None:
        return [], False
    if not hasattr(res, "history"):
        raise ConfigError(f"Recovery.finetune must return a FitResult (or None), got {type(res).__name__}")
    return list(res.history), bool(getattr(res, "interrupted", False))


def _without_data(part: str) -> Callable:
    def fn(model: nn.Module, *args, **kwargs):
        raise ConfigError(f"Recovery.{part}: Recovery.default was built without data; pass data (a DataSplits with "
                          f"a validation split) or replace the part: recovery.with_({part}=your_function)")

    return fn


@dataclass(frozen=True)
class FitFinetune:
    """The default ``Recovery.finetune``: :func:`prunekit.train.fit` on ``data`` with ``config``.

    ``distill`` (a FeatureDistillConfig) with ``teacher`` builds a fresh distiller per call, since the
    student's layers change between rounds. ``callbacks`` go to ``fit`` (AGP prunes through them).
    """

    data: Any
    config: Any = None  # a FitConfig; None or epochs 0: no training (returns None)
    loss_fn: Optional[Callable] = None
    teacher: Optional[nn.Module] = None
    distill: Any = None
    example_inputs: Any = None
    progress: Optional[Progress] = None
    stage: str = "recovery"  # labels the progress bar and the history rows

    def __call__(self, model: nn.Module, *, callbacks=()):
        from ..train.loop import fit

        if self.config is None or self.config.epochs == 0:
            return None
        if self.data is None:
            raise ConfigError(f"{self.stage}: fine-tuning needs data; pass it to Recovery.default, or set finetune=None")
        distiller = None
        if self.distill is not None:
            if self.teacher is None:
                raise ConfigError(f"{self.stage}: distillation needs the unpruned model as teacher; pass "
                                  "teacher= to Recovery.default, or drop distill")
            distiller = self.distill.build(self.teacher, model, self.example_inputs)
        try:
            return fit(model, self.data, self.config, loss_fn=self.loss_fn, distiller=distiller, progress=self.progress,
                       callbacks=list(callbacks), stage=self.stage)
        finally:
            if distiller is not None:
                distiller.close()


# --- the default parts ---------------------------------------------------------------------------


def default_prune_fn(example_inputs, granularity: str = "weight", **prune_kwargs) -> Callable[..., nn.Module]:
    """Weight pruning asks for the cumulative sparsity (``relative_to="total"``, pruned weights stay pruned);
    channel pruning removes ``step`` of the current, already smaller model."""
    from ..api import prune

    def fn(model: nn.Module, *, total: float, step: float, inplace: bool = False) -> nn.Module:
        if granularity == "weight":
            return prune(model, example_inputs, granularity="weight", ratio=total, relative_to="total",
                         inplace=inplace, **prune_kwargs)
        return prune(model, example_inputs, granularity=granularity, ratio=step, inplace=inplace, **prune_kwargs)

    return fn


def default_prune_layers_fn(example_inputs, granularity: str = "weight", **prune_kwargs):
    """One ratio per named layer (``layer_ratios``), every other layer untouched; all zero: the model as is."""
    from ..api import prune

    def fn(model: nn.Module, layer_ratios: Dict[str, float]) -> nn.Module:
        ratios = {name: r for name, r in layer_ratios.items() if r > 0}
        if not ratios:
            return model
        if granularity == "weight":
            return prune(model, example_inputs, granularity="weight", ratio=0.0, layer_ratios=ratios,
                         relative_to="total", **prune_kwargs)
        return prune(model, example_inputs, granularity=granularity, ratio=0.0, layer_ratios=ratios, **prune_kwargs)

    return fn


def default_evaluate_fn(data, loss_fn=None) -> Callable[[nn.Module], dict]:
    """Validation metrics (accuracy, recall_macro, fpr_macro, loss): the budget is judged on validation, never test."""
    from ..train.loop import evaluate

    def fn(model: nn.Module) -> dict:
        return evaluate(model, *data.split("val"), num_classes=data.num_classes, loss_fn=loss_fn)

    return fn


def default_measure_fn(example_inputs, latency: bool = False) -> Callable[[nn.Module], dict]:
    from ..api import measure

    keys = ("params", "nonzero_params", "macs", "nonzero_macs", "latency_ms")

    def fn(model: nn.Module) -> dict:
        m = measure(model, example_inputs, latency=latency, repeats=10, warmup=2) if latency else \
            measure(model, example_inputs, latency=False)
        return {k: m[k] for k in keys if k in m}

    return fn
