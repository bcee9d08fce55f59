"""REDUCERS: the registry of dimensionality reducers (scikit-learn estimators underneath) users extend.

A reducer is registered as a factory ``(n_components, *, random_state, **kwargs) -> estimator``
plus what prunekit must know about it: whether it needs labels, whether it can transform
new samples (out-of-sample), and, for linear ones, how to read its affine map so it can be
folded into a model's first layer::

    @register_reducer("my_pca", linear_map=my_map, trusted_types=("mypkg.MyEstimator",))
    def my_pca(n_components, *, random_state=0, **kw):
        return MyEstimator(n_components=n_components, **kw)
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Optional, Tuple

import numpy as np

from ..errors import ReducerError
from ..registry import Registry

# (A, c) with z = x @ A.T + c, A of shape (k, D), c of shape (k,), both float64
AffineMap = Tuple[np.ndarray, np.ndarray]


@dataclass(frozen=True)
class ReducerSpec:
    """What prunekit knows about one registered reducer."""

    name: str  # registry key, e.g. "pca"
    factory: Callable[..., Any]  # (n_components, *, random_state, **kwargs) -> unfitted sklearn estimator
    supervised: bool = False  # fit() needs the labels (LDA)
    out_of_sample: bool = True  # has transform() for samples it was not fitted on; False: pictures only
    linear_map: Optional[Callable[[Any], AffineMap]] = None  # foldable: fitted estimator -> (A, c)
    max_components: Optional[Callable[[int, int, int], Tuple[int, str]]] = None  # (N, D, classes) -> (limit, why)
    trusted_types: Tuple[str, ...] = ()  # extra types skops may load for this reducer (beyond the built-in list)
    help: str = ""

    @property
    def linear(self) -> bool:
        return self.linear_map is not None


REDUCERS: Registry[ReducerSpec] = Registry("reducer")


def register_reducer(
    name: str,
    *,
    supervised: bool = False,
    out_of_sample: bool = True,
    linear_map: Optional[Callable[[Any], AffineMap]] = None,
    max_components: Optional[Callable[[int, int, int], Tuple[int, str]]] = None,
    trusted_types: Tuple[str, ...] = (),
    override: bool = False,
):
    """Decorator registering an estimator factory as reducer ``name`` (see module docstring)."""

    def deco(factory: Callable[..., Any]) -> Callable[..., Any]:
        spec = ReducerSpec(
            name=name,
            factory=factory,
            supervised=supervised,
            out_of_sample=out_of_sample,
            linear_map=linear_map,
            max_components=max_components,
            trusted_types=tuple(trusted_types),
            help=(factory.__doc__ or "").strip().splitlines()[0] if factory.__doc__ else "",
        )
        REDUCERS.add(name, spec, override=override)
        return factory

    return deco


# ---- linear maps of the built-in linear reducers ---------------------------------------------


def pca_map(est: Any) -> AffineMap:
    """PCA: z = (x - mean_) @ components_.T, divided by sqrt(explained_variance_) when whiten=True."""
    comps = np.asarray(est.components_, dtype=np.float64)
    if getattr(est, "whiten", False):
        comps = comps / np.sqrt(np.asarray(est.explained_variance_, dtype=np.float64))[:, None]
    mean = np.asarray(est.mean_, dtype=np.float64)
    return comps, -comps @ mean


def lda_map(est: Any) -> AffineMap:
    """LDA: z = (x - xbar_) @ scalings_[:, :k] (svd solver) or x @ scalings_[:, :k] (eigen)."""
    k = int(est._max_components)
    scal = np.asarray(est.scalings_, dtype=np.float64)[:, :k].T
    if est.solver == "svd":
        return scal, -scal @ np.asarray(est.xbar_, dtype=np.float64)
    if est.solver == "eigen":
        return scal, np.zeros(scal.shape[0])
    raise ReducerError(
        f"LDA with solver={est.solver!r} has no transform; use solver='svd' or 'eigen' to reduce dimensions"
    )


def lda_limit(n_samples: int, n_features: int, n_classes: int) -> Tuple[int, str]:
    return max(n_classes - 1, 0), f"LDA gives at most classes - 1 = {n_classes} - 1 = {n_classes - 1} components"
