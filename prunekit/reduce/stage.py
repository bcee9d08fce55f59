"""The ``reduce:`` recipe stage: fit a reducer on train, reduce every split, size the model input, compare, fold.

Runs before training (``ORDER_REDUCE``). It replaces ``ctx.data`` by the reduced splits and
``ctx.model`` by the same architecture on ``n_components`` inputs: a registered or user factory
receives ``in_features=n_components`` when its signature has that parameter, otherwise the
model's first Linear is replaced by a fresh ``nn.Linear(n_components, out)``. After the other
stages, :func:`finish_reduce` (queued in ``ctx.extras["after_stages"]``) folds linear reducers,
writes the reducer + model pipeline, and records the pictures for the report.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Dict, List, Literal, Optional

import numpy as np
import torch

from ..errors import ReducerError
from ..modelutils import clone_model
from ..recipe.schema import from_dict
from ..recipe.stages import ORDER_REDUCE, RunContext, register_stage
from ..train.loop import FitConfig
from .compare import input_pruning_row, reduced_row, sizes, train_row
from .data import reduce_splits, resize_input
from .registry import REDUCERS
from .reducer import Reducer

log = logging.getLogger(__name__)


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


def comparison_fit(ctx: RunContext, cfg: ReduceConfig) -> FitConfig:
    if cfg.train is not None:
        return cfg.train
    return from_dict(FitConfig, ctx.recipe.get("train") or {}, "train")


@register_stage("reduce", config=ReduceConfig, order=ORDER_REDUCE, help="input dimensionality reduction before training")
def run_reduce(ctx: RunContext, cfg: ReduceConfig) -> None:
    raw = ctx.data
    raw_model, raw_spec = ctx.model, dict(ctx.model_spec or {})
    reducer = Reducer(cfg.method, cfg.n_components, random_state=ctx.seed, **cfg.kwargs)
    ctx.progress.message(f"reduce: fitting {reducer!r} on {len(raw.x_train)} training samples")
    reduced = reduce_splits(raw, reducer)
    model, spec = resize_input(raw_model, raw_spec, reducer.n_components_, raw.x_train[:2])
    summary = {
        "method": cfg.method, "n_components": reducer.n_components_, "kwargs": dict(cfg.kwargs),
        "in_features_raw": int(raw.x_train[0].numel()), "input_shape_raw": list(raw.input_shape),
        "fitted_on": reducer.fitted_on_, "linear": reducer.is_linear, "fold": cfg.fold,
        "explained_variance": explained_variance_curve(raw, ctx.seed),
        "rows": [],
    }
    if cfg.compare or cfg.sweep:
        summary["rows"] = comparison_rows(ctx, cfg, raw, raw_model, raw_spec)
    ctx.data, ctx.model, ctx.model_spec = reduced, model, spec
    ctx.example_inputs = reduced.example_inputs(1)
    ctx.teacher = None  # a teacher on raw inputs would not fit the reduced model
    ctx.extras["reduce"] = {"reducer": reducer, "raw_data": raw, "config": cfg}
    ctx.extras.setdefault("after_stages", []).append(finish_reduce)
    ctx.results["reduce"] = summary
    ctx.record("reduce", method=cfg.method, n_components=reducer.n_components_,
               in_features_raw=summary["in_features_raw"], **sizes(model, ctx.example_inputs, latency=False))


def comparison_rows(ctx: RunContext, cfg: ReduceConfig, raw, raw_model, raw_spec) -> list:
    """Rows: the model without reduction, input-feature pruning to n_components, and each swept dimension."""
    fit_cfg = comparison_fit(ctx, cfg)
    kw = dict(loss_fn=ctx.loss_fn, progress=ctx.progress, latency=cfg.latency)
    rows = []
    if cfg.compare:
        ctx.progress.message("reduce: training the model without reduction for comparison")
        row, trained = train_row("no-reduction", clone_model(raw_model), raw, fit_cfg, **kw)
        rows.append(row)
        rows.append(input_pruning_row(trained, raw, cfg.n_components, fit_cfg, **kw))
    dims = sorted(set(cfg.sweep or []) | {cfg.n_components})
    for k in dims:
        ctx.progress.message(f"reduce: sweep {cfg.method}-{k}")
        reducer = Reducer(cfg.method, k, random_state=ctx.seed, **cfg.kwargs)
        data = reduce_splits(raw, reducer)
        model, _ = resize_input(raw_model, raw_spec, reducer.n_components_, raw.x_train[:2])
        row, _ = reduced_row(reducer, model, data, fit_cfg, raw_example=raw.x_test[:1], **kw)
        row["chosen"] = k == cfg.n_components
        rows.append(row)
    return rows


def explained_variance_curve(raw, seed: int, max_components: int = 512) -> Optional[list]:
    """Cumulative explained-variance ratio of a PCA of the training inputs (for the report's curve)."""
    x = raw.x_train.reshape(len(raw.x_train), -1)
    k = int(min(x.shape[0], x.shape[1], max_components))
    if k < 1:
        return None
    pca = Reducer("pca", k, random_state=seed).fit(x)
    return np.round(np.cumsum(pca.estimator_.explained_variance_ratio_), 5).tolist()


def finish_reduce(ctx: RunContext) -> dict:
    """After training/pruning: pipeline files, the folded model (linear reducers), pictures. Returns the summary."""
    from ..io import save
    from .features import feature_pictures
    from .fold import fold_into
    from .pipeline import ReducedModel, save_pipeline

    state = ctx.extras["reduce"]
    reducer, raw, cfg = state["reducer"], state["raw_data"], state["config"]
    summary = ctx.results.setdefault("reduce", {})
    pipe_dir = save_pipeline(ctx.out_dir / "reduce_pipeline", reducer, ctx.model, model_spec=ctx.model_spec)
    ctx.artifacts["reduce_pipeline"] = str(pipe_dir)
    end_to_end = ReducedModel(reducer, ctx.model).eval()
    final = {"end_to_end": sizes(end_to_end, raw.x_test[:1], latency=cfg.latency)}
    if cfg.fold and reducer.is_linear:
        folded = fold_into(ctx.model, reducer, how=cfg.fold_how).eval()
        probe = raw.x_test[:256]
        with torch.no_grad():
            final["fold_max_abs_diff"] = float((folded(probe) - end_to_end(probe)).abs().max())
        final["folded"] = sizes(folded, raw.x_test[:1], latency=cfg.latency)
        final["fold_how"] = cfg.fold_how
        ctx.artifacts["model_folded"] = str(save(folded, ctx.out_dir / "model_folded.safetensors"))
        state["folded"] = folded
    if cfg.pictures:
        models = {"original": ctx.teacher, "pruned": ctx.model}
        summary["pictures"] = feature_pictures(models, ctx.data.x_test, ctx.data.y_test,
                                               max_points=cfg.picture_points, seed=ctx.seed)
    summary["final"] = final
    return summary
