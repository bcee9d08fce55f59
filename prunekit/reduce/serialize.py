"""Save / load fitted reducers in a safe format: skops files with the loadable types listed explicitly, never pickle."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Union

from ..errors import ReducerError
from .registry import REDUCERS
from .reducer import Reducer

FORMAT = "prunekit.reducer/1"

# Types a reducer file may contain beyond what skops trusts by default (scikit-learn's own estimators,
# numpy / scipy containers). Registered reducers add theirs through ``ReducerSpec.trusted_types``.
TRUSTED_TYPES: tuple[str, ...] = ()


def save_reducer(reducer: Reducer, path: Union[str, os.PathLike]) -> Path:
    """Write a fitted :class:`Reducer` (estimator + shape metadata) to ``path`` (a ``.skops`` file)."""
    import skops.io as sio

    reducer.check_fitted()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    payload = {
        "format": FORMAT,
        "method": reducer.method,
        "n_components": int(reducer.n_components),
        "random_state": int(reducer.random_state),
        "kwargs": dict(reducer.kwargs),
        "input_shape": list(reducer.input_shape_),
        "n_features_in": int(reducer.n_features_in_),
        "n_components_out": int(reducer.n_components_),
        "fitted_on": dict(reducer.fitted_on_),
        "estimator": reducer.estimator_,
    }
    try:
        sio.dump(payload, str(path))
    except Exception as exc:  # skops refuses objects it cannot represent safely
        raise ReducerError(
            f"cannot save reducer {reducer.method!r} with skops ({type(exc).__name__}: {exc}); "
            "its kwargs must be plain values (numbers, strings, lists)"
        ) from exc
    return path


def load_reducer(path: Union[str, os.PathLike]) -> Reducer:
    """Read a reducer written by :func:`save_reducer`; refuses files holding types that are not allow-listed."""
    import skops.io as sio

    path = Path(path)
    if not path.is_file():
        raise ReducerError(f"reducer file {str(path)!r} does not exist; write one with prunekit.reduce.save_reducer")
    try:
        untrusted = sio.get_untrusted_types(file=str(path))
    except Exception as exc:
        raise ReducerError(f"{str(path)!r} is not a readable skops reducer file ({type(exc).__name__}: {exc})") from exc
    allowed = set(TRUSTED_TYPES) | {t for name in REDUCERS.names() for t in REDUCERS.get(name).trusted_types}
    refused = sorted(set(untrusted) - allowed)
    if refused:
        raise ReducerError(
            f"reducer file {str(path)!r} contains types that are not allow-listed: {', '.join(refused)}. "
            "If you trust them, register the reducer with trusted_types=(...) (register_reducer) and load again"
        )
    payload = sio.load(str(path), trusted=sorted(set(untrusted)))
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ReducerError(f"{str(path)!r} is not a prunekit reducer file (format {FORMAT!r} expected)")
    return _from_payload(payload)


def _from_payload(payload: dict) -> Reducer:
    reducer = Reducer(
        payload["method"], payload["n_components"], random_state=payload["random_state"], **payload["kwargs"]
    )
    reducer.estimator_ = payload["estimator"]
    reducer.input_shape_ = tuple(payload["input_shape"])
    reducer.n_features_in_ = int(payload["n_features_in"])
    reducer.n_components_ = int(payload["n_components_out"])
    reducer.fitted_on_ = dict(payload["fitted_on"])
    return reducer
