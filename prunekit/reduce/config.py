"""``ReduceConfig``: the typed request for input dimensionality reduction before training (recipe ``reduce:``)."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional

from ..errors import ReducerError
from ..train.loop import FitConfig
from .registry import REDUCERS


@dataclass
class ReduceConfig:
    """Input dimensionality reduction before training (recipe ``reduce:``)."""

    method: str = "pca"  # registered reducer (prunekit.reduce.REDUCERS); tsne / umap are refused: no out-of-sample transform
    n_components: int = 32  # the reduced input dimension the model is trained on
    kwargs: Dict[str, Any] = field(default_factory=dict)  # extra scikit-learn estimator arguments, e.g. {whiten: true}
    fold: bool = True  # after training/pruning fold a linear reducer (pca, lda) into the model: model_folded.safetensors
    fold_how: Literal["auto", "merge", "prepend"] = "auto"  # merge into the first layer, keep the projection in front, or the fewer MACs
    sweep: Optional[List[int]] = None  # also train + measure the model at these dimensions (accuracy vs size table)
    compare: bool = True  # also train the model without reduction, and input-feature-prune it to n_components
    train: Optional[FitConfig] = None  # training for the comparison rows; None: the recipe's train: section
    latency: bool = True  # time the comparison models (batch 1 and 64)
    pictures: bool = True  # 2-D PCA / t-SNE of penultimate features of the original and pruned model
    picture_points: int = 500  # test samples in those pictures

    def validate(self) -> None:
        spec = REDUCERS.get(self.method)
        if not spec.out_of_sample:
            raise ReducerError(
                f"reduce.method {self.method!r} cannot reduce model inputs: it has no out-of-sample transform, so "
                "validation/test data could not be reduced; it is for pictures only. Use pca, lda, kernel_pca, isomap or lle"
            )
        for k in [self.n_components, *(self.sweep or [])]:
            if k < 1:
                raise ReducerError(f"reduce: target dimensions must be >= 1, got {k}")
