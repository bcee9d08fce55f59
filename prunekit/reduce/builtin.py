"""The built-in reducers: PCA, LDA, Kernel PCA, Isomap, LLE (pipeline-ready) and t-SNE, UMAP (pictures only).

scikit-learn is imported when a reducer is built, not when this module registers them.
"""
from __future__ import annotations

from ..errors import ReducerError
from .registry import lda_limit, lda_map, pca_map, register_reducer


@register_reducer("pca", linear_map=pca_map)
def pca(n_components: int, *, random_state: int = 0, **kwargs):
    """Principal component analysis (linear, foldable; ``whiten=True`` supported)."""
    from sklearn.decomposition import PCA

    return PCA(n_components=n_components, random_state=random_state, **kwargs)


@register_reducer("lda", supervised=True, linear_map=lda_map, max_components=lda_limit)
def lda(n_components: int, *, random_state: int = 0, **kwargs):
    """Linear discriminant analysis (supervised, linear, foldable; at most classes - 1 components)."""
    from sklearn.discriminant_analysis import LinearDiscriminantAnalysis

    return LinearDiscriminantAnalysis(n_components=n_components, **kwargs)


@register_reducer("kernel_pca")
def kernel_pca(n_components: int, *, random_state: int = 0, **kwargs):
    """Kernel PCA (non-linear; default kernel 'rbf'); ships beside the model as a skops file."""
    kwargs.setdefault("kernel", "rbf")
    from sklearn.decomposition import KernelPCA

    return KernelPCA(n_components=n_components, random_state=random_state, **kwargs)


@register_reducer("isomap")
def isomap(n_components: int, *, random_state: int = 0, **kwargs):
    """Isomap (non-linear, geodesic distances on a k-NN graph); ships beside the model."""
    from sklearn.manifold import Isomap

    return Isomap(n_components=n_components, **kwargs)


@register_reducer("lle")
def lle(n_components: int, *, random_state: int = 0, **kwargs):
    """Locally linear embedding (non-linear); ships beside the model."""
    kwargs.setdefault("n_neighbors", max(10, n_components + 1))
    # ARPACK's shift-invert fails on LLE's exactly singular weight matrix ("Factor is exactly singular");
    # the dense solver is exact and fine for the few thousand samples LLE is practical for
    kwargs.setdefault("eigen_solver", "dense")
    from sklearn.manifold import LocallyLinearEmbedding

    return LocallyLinearEmbedding(n_components=n_components, random_state=random_state, **kwargs)


@register_reducer("tsne", out_of_sample=False)
def tsne(n_components: int, *, random_state: int = 0, **kwargs):
    """t-SNE (pictures only: it embeds the samples it is fitted on and cannot transform new ones)."""
    kwargs.setdefault("init", "pca")
    from sklearn.manifold import TSNE

    return TSNE(n_components=n_components, random_state=random_state, **kwargs)


@register_reducer("umap", out_of_sample=False)
def umap(n_components: int, *, random_state: int = 0, **kwargs):
    """UMAP (pictures only here; needs the optional dependency umap-learn)."""
    try:
        import umap as umap_lib  # optional dependency
    except ImportError as exc:
        raise ReducerError(
            "reducer 'umap' needs the optional package umap-learn, which is not installed; "
            "install it with `pip install 'prunekit[umap]'` (or `pip install umap-learn`), or use method 'tsne' or 'pca'"
        ) from exc
    return umap_lib.UMAP(n_components=n_components, random_state=random_state, **kwargs)
