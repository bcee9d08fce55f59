"""Reducer: a registered sklearn reducer fitted on training data only, with shape checks and torch in/out."""
from __future__ import annotations

import hashlib
from typing import Any, Optional

import numpy as np
import torch

from ..errors import ReducerError
from . import builtin  # noqa: F401  (fills REDUCERS)
from .registry import REDUCERS, AffineMap, ReducerSpec


def as_matrix(x: Any) -> np.ndarray:
    """Samples as a float64 (N, D) matrix; images (N, C, H, W) are flattened row-major like ``nn.Flatten``."""
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x, dtype=np.float64)
    if x.ndim < 2:
        raise ReducerError(f"reducers take a batch of samples (N, D) or (N, C, H, W), got an array of shape {x.shape}")
    return x.reshape(x.shape[0], -1)


class Reducer:
    """A dimensionality reducer from :data:`REDUCERS`, fitted once on the training split.

    ``Reducer("pca", 32, whiten=True).fit(x_train)`` then ``.transform(x_val)`` applies the
    fitted (out-of-sample) transform; nothing about validation or test data is learned.
    Learned state ends in ``_``: ``estimator_``, ``input_shape_``, ``n_features_in_``,
    ``n_components_`` (the real output dimension) and ``fitted_on_`` (sample count and a
    fingerprint of the training matrix, so a test can check what the reducer saw).
    """

    def __init__(self, method: str = "pca", n_components: int = 2, *, random_state: int = 0, **kwargs: Any):
        self.method = method
        self.n_components = n_components
        self.random_state = random_state
        self.kwargs = dict(kwargs)

    # -- description --------------------------------------------------------------------------
    @property
    def spec(self) -> ReducerSpec:
        return REDUCERS.get(self.method)

    @property
    def is_linear(self) -> bool:
        return self.spec.linear

    @property
    def out_of_sample(self) -> bool:
        return self.spec.out_of_sample

    @property
    def fitted(self) -> bool:
        return hasattr(self, "estimator_")

    def get_params(self) -> dict:
        return {"method": self.method, "n_components": self.n_components, "random_state": self.random_state, **self.kwargs}

    def __repr__(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.kwargs.items())
        return f"Reducer({self.method!r}, n_components={self.n_components}{extra})"

    # -- fitting ------------------------------------------------------------------------------
    def fit(self, x: Any, y: Any = None) -> "Reducer":
        """Fit on training samples ``x`` (and labels ``y`` for supervised reducers such as LDA)."""
        self._fit(x, y)
        return self

    def fit_transform(self, x: Any, y: Any = None) -> torch.Tensor:
        """Fit and return the embedding of ``x`` (the only way to use t-SNE / UMAP)."""
        out = self._fit(x, y, keep_embedding=True)
        return torch.as_tensor(out, dtype=torch.float32)

    def _fit(self, x: Any, y: Any, keep_embedding: bool = False) -> Optional[np.ndarray]:
        spec = self.spec
        xm = as_matrix(x)
        labels = self._labels(y, spec, xm.shape[0])
        self._check_components(spec, xm.shape, labels)
        est = spec.factory(self.n_components, random_state=self.random_state, **self.kwargs)
        try:
            if keep_embedding or not spec.out_of_sample:
                out = est.fit_transform(xm, labels) if labels is not None else est.fit_transform(xm)
            else:
                est.fit(xm, labels) if labels is not None else est.fit(xm)
                out = None
        except (ValueError, TypeError) as exc:
            raise ReducerError(
                f"fitting reducer {self.method!r} (n_components={self.n_components}, kwargs={self.kwargs}) "
                f"on data of shape {tuple(xm.shape)} failed: {exc}. Check the reducer's kwargs against scikit-learn's "
                f"{type(est).__name__} documentation."
            ) from exc
        self.estimator_ = est
        self.input_shape_ = tuple(int(s) for s in np.shape(x)[1:])
        self.n_features_in_ = int(xm.shape[1])
        self.fitted_on_ = {"n_samples": int(xm.shape[0]), "sha1": hashlib.sha1(xm.tobytes()).hexdigest()}
        if out is None:
            out = est.transform(xm[:1])
        self.n_components_ = int(out.shape[1])
        return out

    def _labels(self, y: Any, spec: ReducerSpec, n: int) -> Optional[np.ndarray]:
        if not spec.supervised:
            return None
        if y is None:
            raise ReducerError(f"reducer {self.method!r} is supervised: pass the training labels, fit(x_train, y_train)")
        labels = y.detach().cpu().numpy() if isinstance(y, torch.Tensor) else np.asarray(y)
        if labels.shape[0] != n:
            raise ReducerError(f"reducer {self.method!r} got {n} samples but {labels.shape[0]} labels; pass one label per sample")
        return labels

    def _check_components(self, spec: ReducerSpec, shape: tuple, labels: Optional[np.ndarray]) -> None:
        n, d = shape
        k = self.n_components
        if not isinstance(k, (int, np.integer)) or isinstance(k, bool) or k < 1:
            raise ReducerError(f"reducer {self.method!r}: n_components must be a positive integer, got {k!r}")
        if k > d:
            raise ReducerError(
                f"reducer {self.method!r}: n_components={k} exceeds the number of input features ({d}); "
                f"choose n_components <= {d}"
            )
        if k > n:
            raise ReducerError(
                f"reducer {self.method!r}: n_components={k} exceeds the number of training samples ({n}); "
                f"choose n_components <= {n} or fit on more samples"
            )
        if spec.max_components is not None:
            n_classes = int(len(np.unique(labels))) if labels is not None else 0
            limit, why = spec.max_components(n, d, n_classes)
            if k > limit:
                raise ReducerError(
                    f"reducer {self.method!r}: n_components={k} is too many: {why}; choose n_components <= {limit}"
                )

    # -- applying -----------------------------------------------------------------------------
    def check_fitted(self) -> None:
        if not self.fitted:
            raise ReducerError(f"{self!r} is not fitted; call .fit(x_train) first")

    def check_input(self, x: Any) -> np.ndarray:
        """Flatten ``x`` and check it has the feature count the reducer was fitted on."""
        self.check_fitted()
        xm = as_matrix(x)
        if xm.shape[1] != self.n_features_in_:
            raise ReducerError(
                f"reducer {self.method!r} was fitted on {self.n_features_in_} features (sample shape {self.input_shape_}) "
                f"but got data with {xm.shape[1]} features (shape {tuple(np.shape(x))}); transform data shaped like the "
                "training data or refit the reducer on this data"
            )
        return xm

    def transform(self, x: Any) -> torch.Tensor:
        """Out-of-sample transform of new samples with the reducer fitted on the training split."""
        if not self.out_of_sample:
            raise ReducerError(
                f"reducer {self.method!r} has no out-of-sample transform: it only embeds the samples it was fitted on, "
                "so it cannot reduce validation/test data or sit in a pipeline; use it for pictures via fit_transform(), "
                "and reduce model inputs with 'pca', 'lda', 'kernel_pca', 'isomap' or 'lle'"
            )
        xm = self.check_input(x)
        return torch.as_tensor(self.estimator_.transform(xm), dtype=torch.float32)

    def affine_map(self) -> AffineMap:
        """``(A, c)`` with ``transform(x) == flatten(x) @ A.T + c`` for linear reducers (float64)."""
        self.check_fitted()
        if not self.is_linear:
            raise ReducerError(
                f"reducer {self.method!r} is non-linear and cannot be folded into a layer; keep it beside the model: "
                "prunekit.reduce.save_pipeline(dir, reducer, model) / load_pipeline(dir), or ReducedModel(reducer, model)"
            )
        a, c = self.spec.linear_map(self.estimator_)
        return np.asarray(a, dtype=np.float64), np.asarray(c, dtype=np.float64)
