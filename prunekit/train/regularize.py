"""Sparsity-inducing regularisers (L1, L2, elastic net, group lasso, BatchNorm-scale L1): callables ``model -> scalar``.

Each regulariser is added to the training loss by ``prunekit.train.fit(..., regularizer=...)``.
Penalties with a non-smooth kink (L1, group lasso, BN L1) also offer ``prox(model, step)``,
the proximal operator, which sets weights/groups *exactly* to zero; run it after each
optimiser step with :class:`ProximalStep` (a fit callback) instead of adding the penalty
to the loss when exact zeros are wanted.
"""
from __future__ import annotations

import abc
import logging
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, List, Optional, Sequence

import torch
from torch import nn

from .. import match
from ..errors import ConfigError
from ..registry import Registry
from .loop import FitConfig

log = logging.getLogger(__name__)

REGULARIZERS: Registry[type] = Registry("regularizer")
WEIGHT_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)
NORM_LAYERS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.GroupNorm, nn.LayerNorm)


class Regularizer(abc.ABC):
    """Base: selects named tensors of a model and sums a penalty over them, times ``strength``."""

    def __init__(self, *, strength: float = 1e-4, include: Optional[Sequence[Any]] = None, exclude: Sequence[Any] = ()):
        if strength < 0:
            raise ConfigError(f"regularizer strength must be >= 0, got {strength}")
        self.strength = float(strength)  # multiplier of the penalty in the loss
        # module patterns (prunekit.match: names, globs, prefixes, class names, types, modules); include None: all
        self.include = match.as_patterns(include, f"{self._what()} include") or None
        self.exclude = match.as_patterns(exclude, f"{self._what()} exclude")
        self._cache: Optional[tuple] = None  # (model structure, selected names) of the latest model seen

    def _what(self) -> str:
        return f"{getattr(self, 'name', type(self).__name__)} regularizer"

    @abc.abstractmethod
    def tensors(self, model: nn.Module) -> List[tuple[str, torch.Tensor]]:
        """(module name, tensor) pairs the penalty acts on."""

    @abc.abstractmethod
    def penalty(self, w: torch.Tensor) -> torch.Tensor:
        """The penalty of one tensor (before ``strength``)."""

    def __call__(self, model: nn.Module) -> torch.Tensor:
        terms = [self.penalty(w) for _, w in self.tensors(model)]
        if not terms:
            return _zero(model)
        return self.strength * torch.stack(terms).sum()

    def _choose(self, model: nn.Module, cands: List[tuple[str, torch.Tensor]]) -> List[tuple[str, torch.Tensor]]:
        """The ``(name, tensor)`` candidates that include / exclude select (:mod:`prunekit.match`).

        A pattern that names no module of ``model``, or an include pattern that selects none of the layers
        this regulariser acts on, raises :class:`ConfigError` naming it.
        """
        if self.include is None and not self.exclude:
            return cands
        key = (id(model), tuple((n, id(m), type(m)) for n, m in model.named_modules()), tuple(n for n, _ in cands))
        if self._cache is None or self._cache[0] != key:
            self._cache = (key, self._selection(model, [n for n, _ in cands]))
        chosen = self._cache[1]
        return [(n, w) for n, w in cands if n in chosen]

    def _selection(self, model: nn.Module, names: List[str]) -> set:
        what = self._what()
        match.check_patterns(model, f"{what} include", self.include or [], error=ConfigError)
        match.check_patterns(model, f"{what} exclude", self.exclude, error=ConfigError)
        acts_on = set(names)
        for p in self.include or []:
            if not acts_on & set(match.matching(model, [p])):
                raise ConfigError(f"{what} include pattern {match.pattern_text(p)} selects no layer it acts on "
                                  f"({', '.join(sorted(acts_on)[:6]) or 'the model has none'}). {match.PATTERN_HELP}")
        chosen = acts_on if self.include is None else acts_on & set(match.matching(model, self.include))
        return chosen - set(match.matching(model, self.exclude))

    def _weights(self, model: nn.Module, types) -> List[tuple[str, torch.Tensor]]:
        out = []
        for name, module in model.named_modules():
            if isinstance(module, types):
                w = _live_weight(module)
                if w is not None:
                    out.append((name, w))
        return self._choose(model, out)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(strength={self.strength})"


def _live_weight(module: nn.Module) -> Optional[torch.Tensor]:
    """The trainable tensor behind ``module.weight``: ``weight_orig`` under a pruning mask, else ``weight``."""
    w = getattr(module, "weight_orig", None)
    if w is None:
        w = getattr(module, "weight", None)
    return w if isinstance(w, torch.Tensor) else None


def _zero(model: nn.Module) -> torch.Tensor:
    p = next(model.parameters(), None)
    return torch.zeros((), device=p.device if p is not None else "cpu")


def register_regularizer(name: str):
    def deco(cls):
        cls.name = name
        return REGULARIZERS.register(name)(cls)

    return deco


@register_regularizer("l1")
class L1(Regularizer):
    """strength * sum |w| over Linear/Conv weights (drives individual weights to zero)."""

    def tensors(self, model):
        return self._weights(model, WEIGHT_LAYERS)

    def penalty(self, w):
        return w.abs().sum()

    @torch.no_grad()
    def prox(self, model: nn.Module, step: float) -> None:
        """Soft-threshold every weight by ``step * strength``: exact zeros."""
        for _, w in self.tensors(model):
            w.copy_(w.sign() * (w.abs() - step * self.strength).clamp_min(0))


@register_regularizer("l2")
class L2(Regularizer):
    """strength * sum w^2 over Linear/Conv weights (weight decay; shrinks, does not zero)."""

    def tensors(self, model):
        return self._weights(model, WEIGHT_LAYERS)

    def penalty(self, w):
        return w.pow(2).sum()


@register_regularizer("elastic_net")
class ElasticNet(Regularizer):
    """strength * (l1_ratio * sum |w| + (1 - l1_ratio) * sum w^2), as in scikit-learn's ElasticNet mix."""

    def __init__(self, *, l1_ratio: float = 0.5, **kw):
        super().__init__(**kw)
        if not 0.0 <= l1_ratio <= 1.0:
            raise ConfigError(f"elastic_net l1_ratio must lie in [0, 1], got {l1_ratio}")
        self.l1_ratio = float(l1_ratio)  # share of the L1 term

    def tensors(self, model):
        return self._weights(model, WEIGHT_LAYERS)

    def penalty(self, w):
        return self.l1_ratio * w.abs().sum() + (1.0 - self.l1_ratio) * w.pow(2).sum()


@register_regularizer("group_lasso")
class GroupLasso(Regularizer):
    """strength * sum_g sqrt(p_g) ||w_g||_2 over channel groups (rows = output channels / filters of each weight).

    ``dim="out"`` groups by output channel (a conv filter, a Linear row: what channel
    pruning removes); ``dim="in"`` by input channel (a Linear column). The sqrt(p_g)
    factor (Yuan & Lin 2006) makes groups of different size comparable.
    """

    def __init__(self, *, dim: str = "out", **kw):
        super().__init__(**kw)
        if dim not in ("out", "in"):
            raise ConfigError(f"group_lasso dim must be 'out' or 'in', got {dim!r}")
        self.dim = dim  # which axis defines a group

    def tensors(self, model):
        return self._weights(model, WEIGHT_LAYERS)

    def groups(self, w: torch.Tensor) -> torch.Tensor:
        """The weight as a (groups, group_size) matrix."""
        g = w if self.dim == "out" else w.transpose(0, 1)
        return g.reshape(g.shape[0], -1)

    def penalty(self, w):
        g = self.groups(w)
        return (g.size(1) ** 0.5) * group_norms(g).sum()

    @torch.no_grad()
    def prox(self, model: nn.Module, step: float) -> None:
        """Block soft-threshold: w_g <- w_g * max(0, 1 - step*strength*sqrt(p)/||w_g||); whole groups become exactly 0."""
        for _, w in self.tensors(model):
            g = self.groups(w)
            norms = g.norm(dim=1, keepdim=True)
            scale = (1.0 - step * self.strength * g.size(1) ** 0.5 / norms.clamp_min(1e-12)).clamp_min(0)
            shrunk = g * scale
            if self.dim == "out":
                w.copy_(shrunk.reshape(w.shape))
            else:
                w.copy_(shrunk.reshape(w.transpose(0, 1).shape).transpose(0, 1))


def group_norms(g: torch.Tensor) -> torch.Tensor:
    """Row L2 norms with a zero (not NaN) subgradient at an all-zero row."""
    sq = g.pow(2).sum(dim=1)
    safe = torch.where(sq > 0, sq, torch.ones_like(sq))
    return torch.where(sq > 0, safe.sqrt(), torch.zeros_like(sq))


@register_regularizer("bn_l1")
class BatchNormL1(L1):
    """Network slimming (Liu et al. 2017): strength * sum |gamma| over BatchNorm scales; small gammas mark prunable channels.

    The penalty and its soft-threshold step are L1's; only the tensors differ.
    """

    def tensors(self, model):
        return self._choose(model, [(n, m.weight) for n, m in model.named_modules()
                                    if isinstance(m, NORM_LAYERS[:3]) and m.weight is not None])


class SumRegularizer:
    """Several regularisers added together (a recipe may list many terms)."""

    def __init__(self, terms: Iterable[Callable[[nn.Module], torch.Tensor]]):
        self.terms = list(terms)

    def __call__(self, model: nn.Module) -> torch.Tensor:
        if not self.terms:
            return _zero(model)
        return torch.stack([t(model) for t in self.terms]).sum()

    def prox(self, model: nn.Module, step: float) -> None:
        for t in self.terms:
            if hasattr(t, "prox"):
                t.prox(model, step)

    def __repr__(self) -> str:
        return f"SumRegularizer({self.terms})"


def create_regularizer(kind: str, **kwargs) -> Regularizer:
    """A registered regulariser by name: ``create_regularizer("group_lasso", strength=1e-4)``."""
    try:
        return REGULARIZERS.create(kind, **kwargs)
    except TypeError as exc:
        raise ConfigError(f"regularizer {kind!r}: {exc}") from exc


class ProximalStep:
    """Fit callback applying ``reg.prox(model, lr)`` after each optimiser step (proximal gradient descent).

    Use it *instead of* adding the non-smooth penalty to the loss; it produces exact zeros.
    """

    def __init__(self, regularizer, lr: float):
        if not hasattr(regularizer, "prox"):
            raise ConfigError(f"{regularizer!r} has no proximal operator; use l1, group_lasso or bn_l1")
        self.regularizer = regularizer
        self.lr = float(lr)  # step size of the proximal update (the optimiser's learning rate)

    def __call__(self, event: str, state: dict) -> None:
        if event == "step":
            self.regularizer.prox(state["model"], self.lr)


@dataclass
class RegularizerTerm:
    """One recipe term: ``{kind: group_lasso, strength: 1e-4, dim: out}``."""

    kind: str = "l1"  # a name in REGULARIZERS: l1, l2, elastic_net, group_lasso, bn_l1
    strength: float = 1e-4  # multiplier of the penalty
    include: Optional[List[str]] = None  # module patterns to regularise (names, globs, prefixes, class names; null: all)
    exclude: List[str] = field(default_factory=list)  # module patterns to skip
    l1_ratio: float = 0.5  # elastic_net only: share of the L1 term
    dim: str = "out"  # group_lasso only: "out" (filters / rows) or "in" (input columns)

    def build(self) -> Regularizer:
        kw = dict(strength=self.strength, include=self.include, exclude=self.exclude)
        if self.kind == "elastic_net":
            kw["l1_ratio"] = self.l1_ratio
        if self.kind == "group_lasso":
            kw["dim"] = self.dim
        return create_regularizer(self.kind, **kw)


def zero_group_fraction(model: nn.Module, *, tol: float = 0.0, dim: str = "out") -> dict:
    """Per layer: fraction of output channels (rows) whose weights are all within ``tol`` of zero."""
    probe = GroupLasso(dim=dim)
    out = {}
    for name, w in probe.tensors(model):
        g = probe.groups(w.detach())
        out[name] = float((g.abs().amax(dim=1) <= tol).float().mean())
    return out


# --- the ``regularize:`` recipe stage ----------------------------------------------------------


def _default_terms() -> List[RegularizerTerm]:
    return [RegularizerTerm(kind="l1", strength=1e-5)]


@dataclass
class RegularizeConfig:
    """Recipe ``regularize:``: train with sparsity-inducing penalties before pruning.

    ``terms`` lists penalties (``{kind, strength, ...}``) summed into the loss; with
    ``proximal: true`` the non-smooth ones (l1, group_lasso, bn_l1) are applied as proximal
    steps after each optimiser step instead, which produces exact zeros.
    """

    terms: List[RegularizerTerm] = field(default_factory=_default_terms)  # penalties to add
    proximal: bool = False  # apply l1 / group_lasso / bn_l1 by their proximal operator (exact zeros)
    fit: FitConfig = field(default_factory=lambda: FitConfig(epochs=5, lr=1e-3))  # the training run
    zero_tol: float = 1e-3  # a channel counts as "near zero" below this max |w| (reported)

    def check(self, model: nn.Module) -> None:
        """Pre-flight: every term's include / exclude patterns select layers of ``model`` it acts on (else ConfigError)."""
        for term in self.terms:
            term.build().tensors(model)
