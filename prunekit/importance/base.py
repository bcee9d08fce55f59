"""The importance-criterion interface: a criterion scores weights (unstructured) and/or channel groups (structured).

A criterion declares what it reads in ``needs`` (a frozenset over :data:`NEEDS`):

* ``"weights"``     -- the parameter values (magnitude, FPGM, BatchNorm scale, Taylor);
* ``"gradients"``   -- dL/dw on calibration batches, delivered to :meth:`Criterion.observe` after each backward;
* ``"activations"`` -- activation outputs on calibration batches, delivered to
  :meth:`Criterion.observe_activation` (channel pruning only: it needs the traced graph);
* ``"inputs"``      -- what each pruned weight multiplies: its layer's inputs as a ``(tokens, columns)`` matrix,
  delivered to :meth:`Criterion.observe_input` (weight pruning only; Wanda, SparseGPT).

:func:`prunekit.importance.calibrate.calibrate` is the one loop that feeds the last three.
"""
from __future__ import annotations

import inspect
import warnings
from typing import Iterable, Optional

import numpy as np
import torch
from torch import nn

from ..errors import ConfigError, PruningError
from ..registry import Registry

WEIGHTS, GRADIENTS, ACTIVATIONS, INPUTS = "weights", "gradients", "activations", "inputs"
NEEDS = frozenset({WEIGHTS, GRADIENTS, ACTIVATIONS, INPUTS})  # everything a criterion may declare in ``needs``
DATA_NEEDS = frozenset({GRADIENTS, ACTIVATIONS, INPUTS})  # what only calibration batches can supply
WEIGHT_SCOPES = ("global", "local", "row")  # how weight pruning compares scores (see PruneSpec.scope)


class NeedsDataError(ConfigError, PruningError):
    """A data-driven criterion got no calibration batches (a ConfigError; a PruningError for older callers)."""


def check_needs(needs, owner: str = "criterion") -> frozenset:
    """``needs`` as a frozenset of known names; :class:`ConfigError` for an unknown one or a plain string."""
    if isinstance(needs, str) or not isinstance(needs, Iterable):
        raise ConfigError(f"{owner}.needs must be a set of {sorted(NEEDS)}, got {needs!r}")
    needs = frozenset(needs)
    unknown = sorted(map(str, needs - NEEDS))
    if unknown:
        raise ConfigError(f"{owner}.needs names unknown input(s) {unknown}; a criterion may need {sorted(NEEDS)}")
    return needs


class Criterion:
    """Base class of importance criteria. Higher score = more important = kept.

    Protocol:

    * ``needs`` (class attribute, frozenset over ``{"weights", "gradients", "activations"}``) declares what
      the criterion reads; the engines feed exactly that. ``needs_data`` (read-only) is True when it holds
      ``"gradients"`` or ``"activations"``: such a criterion cannot score without calibration batches.
    * :meth:`reset` forgets accumulated statistics; the calibration loop calls it before the first batch.
    * :meth:`observe` is called after every calibration backward with the (name, parameter) pairs whose
      ``.grad`` holds that batch's gradient (criteria needing ``"gradients"``).
    * :meth:`observe_activation` is called for every activation output of every calibration batch
      (criteria needing ``"activations"``, channel pruning only).
    * :meth:`observe_input` is called with every selected layer's inputs of every calibration batch
      (criteria needing ``"inputs"``, weight pruning only).
    * :meth:`all_reduce` is called once after the batches under torchrun (never in one process): it sums the
      accumulated statistics over the processes, so every rank scores with the whole calibration set.
    * :meth:`weight_scores` scores one parameter (unstructured pruning); :meth:`group_scores` scores the
      channels of one dependency group (structured pruning). Implement either or both.

    Weight pruning also reads three class attributes: ``default_scope`` (the comparison group when
    ``scope`` is not given: ``"global"``, or ``"row"`` for Wanda), ``scopes`` (the ones it allows) and
    ``reconstructs`` (True: the criterion also rewrites the kept weights, layer by layer -- SparseGPT).
    """

    name: str = "criterion"
    needs: frozenset = frozenset({WEIGHTS})
    default_scope: str = "global"
    scopes: tuple = WEIGHT_SCOPES
    reconstructs: bool = False

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        legacy = {k: cls.__dict__[k] for k in ("needs_data", "needs_activations")
                  if k in cls.__dict__ and not isinstance(cls.__dict__[k], property)}
        if legacy:  # the protocol before ``needs``: translate it, so an old plug-in still gets its data
            warnings.warn(f"{cls.__name__}: declare `needs = frozenset({{...}})` instead of "
                          f"{' / '.join(f'{k} = ...' for k in legacy)}", DeprecationWarning, stacklevel=2)
            for k in legacy:
                delattr(cls, k)
            if "needs" not in cls.__dict__:
                if legacy.get("needs_activations"):
                    cls.needs = frozenset({WEIGHTS, ACTIVATIONS})
                elif legacy.get("needs_data"):
                    cls.needs = frozenset({WEIGHTS, GRADIENTS})
        if "needs" in cls.__dict__:
            cls.needs = check_needs(cls.__dict__["needs"], cls.__name__)

    @property
    def needs_data(self) -> bool:
        """True when the criterion needs calibration batches (it reads gradients or activations)."""
        return bool(self.needs & DATA_NEEDS)

    def reset(self) -> None:
        """Forget statistics accumulated by :meth:`observe` / :meth:`observe_activation`."""

    def all_reduce(self, sums) -> None:
        """Make the statistics those of every process's calibration batches (torchrun only; after the last batch).

        ``sums(dict) -> dict`` is :func:`prunekit.collective.all_reduce_sums`: it returns, per key, the element-wise
        sum of that tensor over every process (keys missing on a process count as zeros). Hand it sums and counts,
        never per-process means or norms, so the result equals one process over the union of the shards; every
        process gets the same bits, hence the same scores. The default keeps this process's own statistics (right
        for a criterion without any; calibration warns for one that scores weights or channels).
        """

    def observe(self, params: Iterable[tuple[str, nn.Parameter]]) -> None:
        """Called after each calibration backward pass with the (name, parameter) pairs; ``p.grad`` is set."""

    def observe_activation(self, atoms: np.ndarray, values: torch.Tensor, dim: int) -> None:
        """Called with each activation output of a calibration batch; ``atoms[i]``: channel atom of index i along ``dim``."""

    def observe_input(self, name: str, inputs: torch.Tensor) -> None:
        """Called with the ``(tokens, columns)`` inputs of weight ``name`` for each calibration batch (see
        :mod:`prunekit.importance.inputs`: column ``j`` meets column ``j`` of the weight as ``(rows, columns)``)."""

    def weight_scores(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        """Per-element scores, same shape as ``weight``."""
        raise PruningError(f"criterion {self.name!r} does not support unstructured (weight) pruning")

    def group_scores(self, group, **ctx) -> torch.Tensor:  # pragma: no cover - overridden by structured criteria
        """Per-channel scores of a dependency group: one value per ``group.atoms``.

        ``ctx``: ``model`` (the module the group's names refer to), ``reduction`` and ``normalize`` (how the
        per-layer scores combine, see :func:`prunekit.importance.aggregate.aggregate`).
        """
        raise PruningError(f"criterion {self.name!r} does not support structured (channel) pruning")

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


CRITERIA: Registry[type] = Registry("criterion")


def register_criterion(name: str, **kw):
    def deco(cls):
        cls.name = name
        return CRITERIA.register(name, **kw)(cls)

    return deco


def create_criterion(spec, **kwargs) -> Criterion:
    """A :class:`Criterion` from a registered name, a Criterion instance or class, or a plain callable.

    A plain callable is wrapped as a :class:`FunctionCriterion`; what it is called with depends on the
    granularity it is used for:

    * weight (and input-feature) pruning: ``fn(name, weight) -> scores`` of ``weight``'s shape;
    * channel pruning: ``fn(group) -> one score per channel``, where ``group`` is a read-only
      :class:`prunekit.importance.views.GroupView` (its member layers with their parameter slices, the
      group's channel axis first).

    A callable that cannot take the arguments of the granularity it is used for is refused with a
    :class:`PruningError` naming both forms. It reads weights only (``needs = {"weights"}``): a criterion
    that needs gradients or activations is a :class:`Criterion` subclass.
    """
    if isinstance(spec, Criterion):
        return spec
    if isinstance(spec, str):
        return CRITERIA.create(spec, **kwargs)
    if isinstance(spec, type) and issubclass(spec, Criterion):
        return spec(**kwargs)
    if callable(spec):
        return FunctionCriterion(spec)
    raise PruningError(f"criterion must be a registered name ({', '.join(CRITERIA.names())}), a Criterion or a callable")


class FunctionCriterion(Criterion):
    """Wraps a plain callable as a criterion (see :func:`create_criterion` for the two call forms).

    * :meth:`weight_scores` calls ``fn(name, weight)``; the result must have ``weight``'s shape.
    * :meth:`group_scores` calls ``fn(group_view)`` with a :class:`~prunekit.importance.views.GroupView`;
      the result (tensor, array or list) must hold one score per channel of the group
      (``len(group_view)`` values, higher = kept; NaN is refused, +-inf are allowed).
    """

    name = "function"
    needs = frozenset({WEIGHTS})

    def __init__(self, fn):
        self.fn = fn

    def weight_scores(self, name: str, weight: torch.Tensor) -> torch.Tensor:
        _check_call_form(self.fn, 2, "weight")
        scores = torch.as_tensor(self.fn(name, weight))
        if scores.shape != weight.shape:
            raise PruningError(
                f"custom criterion returned scores of shape {tuple(scores.shape)} for {name!r}, "
                f"expected the weight's shape {tuple(weight.shape)}"
            )
        return scores

    def group_scores(self, group, **ctx) -> np.ndarray:
        from .views import GroupView

        if "model" not in ctx:
            raise PruningError("a callable channel criterion needs the model: call group_scores(group, model=...)")
        _check_call_form(self.fn, 1, "channel")
        view = GroupView(group, ctx["model"], reduction=ctx.get("reduction", "mean"),
                         normalize=ctx.get("normalize", "mean"))
        raw = self.fn(view)
        names = view.module_names
        where = (f"custom channel criterion {_fn_name(self.fn)} on group {view.index} "
                 f"({', '.join(names[:3])}{', ...' if len(names) > 3 else ''})")
        if raw is None:
            raise PruningError(f"{where} returned None; return one score per channel ({len(view)} values)")
        try:
            scores = torch.as_tensor(raw).detach().to("cpu", torch.float64)
        except (TypeError, ValueError, RuntimeError) as exc:
            raise PruningError(f"{where} returned {type(raw).__name__}, not numbers: {exc}") from exc
        if tuple(scores.shape) != (len(view),):
            raise PruningError(f"{where} returned scores of shape {tuple(scores.shape)}; expected ({len(view)},): "
                               "one score per channel of the group (len(group))")
        if torch.isnan(scores).any():
            raise PruningError(f"{where} returned NaN scores (channels {torch.isnan(scores).nonzero().flatten().tolist()})")
        return scores.numpy()

    def __repr__(self) -> str:
        return f"FunctionCriterion({_fn_name(self.fn)})"


def _fn_name(fn) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or type(fn).__name__


_CALL_FORMS = {"weight": "fn(name, weight) -> scores shaped like weight",
               "channel": "fn(group) -> one score per channel of the group"}


def _check_call_form(fn, n_args: int, granularity: str) -> None:
    """Refuse a callable that cannot take the ``n_args`` positional arguments of ``granularity``'s form."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: let the call decide
        return
    try:
        sig.bind(*range(n_args))
    except TypeError:
        other = "channel" if granularity == "weight" else "weight"
        raise PruningError(
            f"custom criterion {_fn_name(fn)}{sig} cannot be called as {_CALL_FORMS[granularity]}, the form "
            f"{granularity} pruning uses ({other} pruning calls {_CALL_FORMS[other]})"
        ) from None


def optional_seed(seed: Optional[int]) -> torch.Generator:
    g = torch.Generator()
    g.manual_seed(0 if seed is None else int(seed))
    return g
