"""Dimensionality reduction before pruning: REDUCERS (PCA, LDA, Kernel PCA, Isomap, LLE, t-SNE, UMAP), folding, pipelines.

The ``reduce:`` recipe stage lives in :mod:`prunekit.recipe.stages.reduce`, its report section in
:mod:`prunekit.report.sections.reduce`.
"""
from .registry import REDUCERS, ReducerSpec, register_reducer
from .reducer import Reducer
from .fold import FOLD_MODES, fold_into, fold_macs
from .serialize import load_reducer, save_reducer
from .pipeline import ReducedModel, load_pipeline, reduction_module, save_pipeline
from .data import reduce_splits, resize_input
from .features import penultimate_features
from .config import ReduceConfig

__all__ = [
    "REDUCERS", "ReducerSpec", "register_reducer", "Reducer", "create_reducer", "fold_into", "fold_macs", "FOLD_MODES",
    "save_reducer", "load_reducer", "ReducedModel", "reduction_module", "save_pipeline", "load_pipeline",
    "reduce_splits", "resize_input", "penultimate_features", "ReduceConfig",
]


def create_reducer(method: str = "pca", n_components: int = 2, **kwargs) -> Reducer:
    """An unfitted :class:`Reducer` for registered ``method`` (checks the name now, the sizes at fit)."""
    REDUCERS.get(method)
    return Reducer(method, n_components, **kwargs)
