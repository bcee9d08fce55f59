"""The ``reduce:`` recipe stage: fit a reducer on train, reduce every split, size the model input, compare, fold.

Runs before training (``ORDER_REDUCE``). It replaces ``ctx.data`` by the reduced splits and
``ctx.model`` by the same architecture on ``n_components`` inputs: a registered or user factory
receives ``in_features=n_components`` when its signature has that parameter, otherwise the
model's first Linear is replaced by a fresh ``nn.Linear(n_components, out)``. After the other
stages, :func:`finish_reduce` (queued in ``ctx.extras["after_stages"]``) folds linear reducers,
writes the reducer + model pipeline, and records the pictures for the report.
"""
from __future__ import annotations

import torch

from ...modelutils import clone_model
from ...reduce.compare import explained_variance_curve, input_pruning_row, reduced_row, sizes, train_row
from ...reduce.config import ReduceConfig
from ...reduce.data import reduce_splits, resize_input
from ...reduce.reducer import Reducer
from ...train.loop import FitConfig
from ...typed import from_dict
from . import ORDER_REDUCE, RunContext, register_stage

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


def finish_reduce(ctx: RunContext) -> dict:
    """After training/pruning: pipeline files, the folded model (linear reducers), pictures. Returns the summary."""
    from ...io import save
    from ...reduce.features import feature_pictures
    from ...reduce.fold import fold_into
    from ...reduce.pipeline import ReducedModel, save_pipeline

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
