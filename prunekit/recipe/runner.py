"""Run a recipe: data -> model -> stages (train, prune, fine-tune, ...) -> before/after measures -> files."""
from __future__ import annotations

import inspect
import logging
import random
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from ..modelutils import clone_model
from ..models import MODELS, create_model, import_object
from ..progress import Progress, ensure
from .loader import load_recipe
from .schema import from_dict
from .sections import MeasureConfig, ModelConfig, ReportConfig
from .stages import ORDER_REGULARIZE, STAGES, RunContext

log = logging.getLogger(__name__)


def plan_stages(recipe: dict):
    """``[(stage, cfg)]`` for the stage sections present, validated, in run order."""
    stages = []
    for key in recipe:
        if key in STAGES:
            stage = STAGES.get(key)
            stages.append((stage, from_dict(stage.config, recipe[key], key)))
    return sorted(stages, key=lambda sc: sc[0].order)


def build_model(cfg: ModelConfig, data) -> nn.Module:
    """Instantiate the model, filling num_classes / in_channels / in_features from the data when accepted."""
    factory = import_object(cfg.name) if ":" in cfg.name else MODELS.get(cfg.name)
    kwargs = dict(cfg.kwargs)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        params = {}
    shape = data.input_shape
    auto = {"num_classes": data.num_classes, "in_channels": shape[0] if len(shape) >= 2 else None,
            "in_features": int(np.prod(shape))}
    for key, value in auto.items():
        if key in params and key not in kwargs and value is not None:
            kwargs[key] = value
    model = create_model(cfg.name, **kwargs)
    model._prunekit_spec = {"name": cfg.name, "kwargs": kwargs}
    return model


def snapshot_metrics(ctx: RunContext, mcfg: MeasureConfig) -> dict:
    """Test-set quality + size + speed of ctx.model."""
    from ..api import measure
    from ..train.loop import evaluate
    from ..unstructured import finalize

    quality = evaluate(ctx.model, ctx.data.x_test, ctx.data.y_test, num_classes=ctx.data.num_classes,
                       loss_fn=ctx.loss_fn, progress=ctx.progress, description="evaluate test")
    shipped = finalize(clone_model(ctx.model))  # time the deployable form: masks folded into the weights
    sizes = measure(shipped, ctx.example_inputs, latency=mcfg.latency, batch_sizes=tuple(mcfg.batch_sizes),
                    repeats=mcfg.repeats, warmup=mcfg.warmup, threads=mcfg.threads)
    return {**quality, **sizes}


def run_recipe(source, *, overrides: Optional[Iterable[str]] = None, output: Optional[str] = None,
               progress: Optional[Progress] = None) -> dict:
    """Run a recipe (YAML path or dict) end to end; returns the results dict also written to results.json."""
    from ..data import load_data
    from ..data.config import DataConfig

    from ..train import distributed

    t0 = time.perf_counter()
    distributed.maybe_init()  # under torchrun every process runs the recipe; rank 0 writes the files
    recipe = load_recipe(source, overrides)
    progress = ensure(progress)
    seed = int(recipe.get("seed", 0))
    seed_everything(seed)
    if recipe.get("threads"):  # small models train faster on one thread than on two contended ones
        torch.set_num_threads(int(recipe["threads"]))
    model_cfg = from_dict(ModelConfig, recipe.get("model"), "model")
    data_cfg = from_dict(DataConfig, recipe.get("data"), "data")
    measure_cfg = from_dict(MeasureConfig, recipe.get("measure"), "measure")
    report_cfg = from_dict(ReportConfig, recipe.get("report"), "report")
    stages = plan_stages(recipe)
    if not stages:
        raise ConfigError(f"the recipe has no stage to run; add one of: {', '.join(STAGES.names())}")
    out_dir = Path(output or recipe.get("output") or "runs/prunekit")
    out_dir.mkdir(parents=True, exist_ok=True)

    progress.message(f"loading data {data_cfg.name!r}")
    data = load_data(data_cfg)
    model = build_model(model_cfg, data)
    if model_cfg.checkpoint:
        from ..io import load

        model = load(model_cfg.checkpoint, model)
    ctx = RunContext(model=model, data=data, out_dir=out_dir, recipe=recipe, example_inputs=data.example_inputs(1),
                     loss_fn=F.cross_entropy, progress=progress, seed=seed, model_spec=model._prunekit_spec)
    ctx.results.update(recipe=recipe, data={"name": data.name, "train": len(data.x_train), "val": len(data.x_val),
                                            "test": len(data.x_test), "input_shape": list(data.input_shape),
                                            "num_classes": data.num_classes, **data.info})
    timings = ctx.results.setdefault("timings_s", {})
    before_taken = False
    for stage, cfg in stages:
        if not before_taken and stage.order >= ORDER_REGULARIZE:
            _take_before(ctx, measure_cfg)
            before_taken = True
        progress.message(f"stage {stage.key}")
        t_stage = time.perf_counter()
        stage.run(ctx, cfg)
        timings[stage.key] = round(time.perf_counter() - t_stage, 3)
    if not before_taken:
        _take_before(ctx, measure_cfg)
    for finish in ctx.extras.pop("after_stages", []):  # stages may queue work for the final model (e.g. folding)
        finish(ctx)
    progress.message("measuring the final model")
    t_m = time.perf_counter()
    ctx.results["after"] = snapshot_metrics(ctx, measure_cfg)
    timings["measure_after"] = round(time.perf_counter() - t_m, 3)
    ctx.results["history"] = ctx.history
    t_w = time.perf_counter()
    ctx.artifacts["results"] = str(out_dir / "results.json")
    if not distributed.is_main():
        return ctx.results
    _write_outputs(ctx, report_cfg)
    timings["outputs"] = round(time.perf_counter() - t_w, 3)
    ctx.results["elapsed_s"] = round(time.perf_counter() - t0, 2)
    from ..report import write_results

    write_results(out_dir, ctx.results)
    return ctx.results


def _take_before(ctx: RunContext, mcfg: MeasureConfig) -> None:
    ctx.progress.message("measuring the model before pruning")
    t = time.perf_counter()
    ctx.teacher = clone_model(ctx.model).eval()
    ctx.results["before"] = snapshot_metrics(ctx, mcfg)
    ctx.results.setdefault("timings_s", {})["measure_before"] = round(time.perf_counter() - t, 3)


def _write_outputs(ctx: RunContext, rcfg: ReportConfig) -> None:
    from ..io import save
    from ..unstructured import sparsity_report

    ctx.model._prunekit_spec = getattr(ctx.model, "_prunekit_spec", ctx.model_spec)
    ctx.artifacts["checkpoint"] = str(save(ctx.model, ctx.out_dir / "model.safetensors", model_spec=ctx.model_spec))
    if rcfg.sparse_checkpoint:
        path = save(ctx.model, ctx.out_dir / "model.sparse.safetensors", sparse=True, model_spec=ctx.model_spec)
        ctx.artifacts["sparse_checkpoint"] = str(path)
    ctx.results["disk_bytes"] = {k: Path(v).stat().st_size for k, v in ctx.artifacts.items() if Path(v).is_file()}
    ctx.results["layers"] = sparsity_report(ctx.model)
    ctx.results["artifacts"] = ctx.artifacts
    if rcfg.html:
        from ..report import write_report

        models = {"before": ctx.teacher, "after": ctx.model}
        ctx.artifacts["report"] = str(write_report(ctx.out_dir, ctx.results, models=models))


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
