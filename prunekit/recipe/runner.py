"""Run a recipe: data -> model -> stages (train, prune, fine-tune, ...) -> before/after measures -> files."""
from __future__ import annotations

import contextlib
import inspect
import logging
import tempfile
import random
import time
from pathlib import Path
from typing import Iterable, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError, OutputError
from ..modelutils import clone_model
from ..models import MODELS, create_model, import_object
from ..progress import Progress, ensure
from .loader import load_recipe
from .schema import from_dict
from .sections import MeasureConfig, ModelConfig, ReportConfig
from .outputs import RunLock, prepare_output, stage_checkpoint_path
from .stages import ORDER_REGULARIZE, ORDER_TRAIN, STAGES, RunContext

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
               progress: Optional[Progress] = None, overwrite: bool = False) -> dict:
    """Run a recipe (YAML path or dict) end to end; returns the results dict also written to results.json.

    Everything that can be checked is checked before the first stage runs (recipe keys, name
    patterns, the output folder, the model on the data's inputs). Each stage's model is saved
    as soon as the stage ends (``stages/NN-<stage>.safetensors``) and results.json is rewritten
    with ``status`` "running"; a failure or Ctrl-C leaves the last good model and a results.json
    whose ``status`` ("failed" / "interrupted"), ``failed_stage`` and ``error`` say what happened,
    then re-raises (Ctrl-C as KeyboardInterrupt: later stages never start). A second run into
    a folder a live run holds is refused unless ``overwrite=True``.
    """
    from ..train import distributed

    distributed.maybe_init()  # under torchrun every process runs the recipe; rank 0 writes the files
    recipe, sections, stages = _parse(source, overrides)
    out_dir = Path(output or recipe.get("output") or "runs/prunekit")
    main = distributed.is_main()
    if main:
        prepare_output(out_dir)
    threads = torch.get_num_threads()
    lock = RunLock(out_dir, overwrite=overwrite) if main else contextlib.nullcontext()
    try:
        with lock, _scratch_if_not_main(main, out_dir) as write_dir:
            return _run(recipe, sections, stages, write_dir, ensure(progress))
    finally:
        torch.set_num_threads(threads)  # a recipe's `threads:` must not leak into the caller's process


def _parse(source, overrides) -> tuple:
    """``(recipe, {section: config}, [(stage, cfg)])``, every key and type validated; nothing is loaded yet."""
    from ..data.config import DataConfig

    recipe = load_recipe(source, overrides)
    stages = plan_stages(recipe)
    if not stages:
        raise ConfigError(f"the recipe has no stage to run; add one of: {', '.join(STAGES.names())}")
    sections = {key: from_dict(cls, recipe.get(key), key) for key, cls in
                (("model", ModelConfig), ("data", DataConfig), ("measure", MeasureConfig), ("report", ReportConfig))}
    return recipe, sections, stages


def _data_and_model(data_cfg, model_cfg: ModelConfig):
    from ..data import load_data

    data = load_data(data_cfg)
    model = build_model(model_cfg, data)
    if model_cfg.checkpoint:
        from ..io import load

        model = load(model_cfg.checkpoint, model)
    return data, model


def check_recipe(source, *, overrides: Optional[Iterable[str]] = None) -> dict:
    """Every check a run makes before its first stage (keys, options, patterns, data, the model on the data),
    with nothing trained and nothing written; returns ``{"stages": [keys in run order], "model", "data"}``."""
    recipe, sections, stages = _parse(source, overrides)
    model_cfg = sections["model"]
    data, model = _data_and_model(sections["data"], model_cfg)
    ctx = RunContext(model=model, data=data, out_dir=Path(recipe.get("output") or "runs/prunekit"), recipe=recipe,
                     example_inputs=data.example_inputs(1), loss_fn=F.cross_entropy, model_spec=model._prunekit_spec)
    preflight(ctx, stages)
    return {"stages": [stage.key for stage, _ in stages], "model": model_cfg.name, "data": data.name}


def _run(recipe: dict, sections: dict, stages: list, out_dir: Path, progress: Progress) -> dict:
    from ..train import distributed

    t0 = time.perf_counter()
    seed = int(recipe.get("seed", 0))
    seed_everything(seed)
    if recipe.get("threads"):  # small models train faster on one thread than on two contended ones
        torch.set_num_threads(int(recipe["threads"]))
    model_cfg, data_cfg, measure_cfg, report_cfg = (sections[k] for k in ("model", "data", "measure", "report"))

    progress.message(f"loading data {data_cfg.name!r}")
    data, model = _data_and_model(data_cfg, model_cfg)
    ctx = RunContext(model=model, data=data, out_dir=out_dir, recipe=recipe, example_inputs=data.example_inputs(1),
                     loss_fn=F.cross_entropy, progress=progress, seed=seed, model_spec=model._prunekit_spec)
    ctx.results.update(status="running", recipe=recipe,
                       data={"name": data.name, "train": len(data.x_train), "val": len(data.x_val),
                             "test": len(data.x_test), "input_shape": list(data.input_shape),
                             "num_classes": data.num_classes, **data.info})
    preflight(ctx, stages)
    timings = ctx.results.setdefault("timings_s", {})
    before_taken = False
    current = None
    try:
        for index, (stage, cfg) in enumerate(stages, start=1):
            if not before_taken and stage.order >= ORDER_REGULARIZE:
                _take_before(ctx, measure_cfg)
                before_taken = True
            current = stage.key
            progress.message(f"stage {stage.key}")
            t_stage = time.perf_counter()
            rows_before, state_before = len(ctx.results["stages"]), _fingerprint(ctx.model)
            if stage.main_only:
                on_main(lambda: stage.run(ctx, cfg))
            else:
                stage.run(ctx, cfg)
            timings[stage.key] = round(time.perf_counter() - t_stage, 3)
            interrupted = any(r.get("interrupted") for r in ctx.results["stages"][rows_before:])
            changed = _fingerprint(ctx.model) != state_before or interrupted
            ctx.results.setdefault("completed_stages", []).append(stage.key)
            on_main(lambda: _after_stage(ctx, index, stage.key, save=changed, interrupted=interrupted))
            if interrupted:  # Ctrl-C inside the stage: it kept its best weights; later stages must not start
                raise KeyboardInterrupt
        current = "measure"
        if not before_taken:
            _take_before(ctx, measure_cfg)
        for finish in ctx.extras.pop("after_stages", []):  # stages may queue work for the final model (e.g. folding)
            finish(ctx)
        ctx.results["history"] = ctx.history

        def finish_on_main():
            nonlocal current
            from ..report import write_results

            progress.message("measuring the final model")
            t_m = time.perf_counter()
            ctx.results["after"] = snapshot_metrics(ctx, measure_cfg)
            timings["measure_after"] = round(time.perf_counter() - t_m, 3)
            current = "outputs"
            t_w = time.perf_counter()
            ctx.artifacts["results"] = str(out_dir / "results.json")
            _write_outputs(ctx, report_cfg)
            timings["outputs"] = round(time.perf_counter() - t_w, 3)
            ctx.results["elapsed_s"] = round(time.perf_counter() - t0, 2)
            ctx.results["status"] = "completed"
            write_results(out_dir, ctx.results)

        on_main(finish_on_main)
        if not distributed.is_main():
            ctx.results["status"] = "completed"
        return ctx.results
    except KeyboardInterrupt:
        _record_stop(ctx, "interrupted", current, None)
        raise
    except Exception as exc:
        _record_stop(ctx, "failed", current, exc)
        raise


def on_main(fn) -> None:
    """Run ``fn`` on rank 0 only (file writes); every rank then waits for it and stops if it failed."""
    from ..train import distributed

    error = None
    if distributed.is_main():
        try:
            fn()
        except BaseException as exc:  # re-raised below, after the other ranks have been told
            error = exc
    ok = distributed.agree(error is None)
    if error is not None:
        raise error
    if not ok:
        raise OutputError("rank 0 failed while writing the run's files (its error is printed above); "
                          "this process stops too")


def preflight(ctx: RunContext, stages: list) -> None:
    """Checks that need the model and data but change nothing: run before the first stage trains anything."""
    from ..errors import InputError
    from .._inputs import run_model

    if not any(stage.order < ORDER_TRAIN for stage, _ in stages):  # no earlier stage reshapes the model's input
        was = ctx.model.training
        ctx.model.eval()
        try:
            with torch.no_grad():
                run_model(ctx.model, ctx.example_inputs)
        except Exception as exc:
            raise InputError(
                f"the model {ctx.model_spec.get('name')!r} does not run on the data's inputs of shape "
                f"{tuple(ctx.example_inputs.shape)} ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
                "check model.kwargs against the data (input size, channels, classes)") from exc
        finally:
            ctx.model.train(was)
    for stage, cfg in stages:
        if stage.check is not None:
            stage.check(ctx, cfg)


def _fingerprint(model: nn.Module) -> tuple:
    """Cheap identity of a model's state: in-place updates bump a tensor's version counter."""
    return (id(model),) + tuple((k, t.data_ptr(), t._version) for k, t in model.state_dict(keep_vars=True).items())


def _after_stage(ctx: RunContext, index: int, key: str, *, save: bool, interrupted: bool) -> None:
    """Rank 0, as soon as a stage ends: its model to ``stages/``, results.json rewritten (status running)."""
    if save:
        _save_stage(ctx, index, key, interrupted=interrupted)
    if interrupted:
        ctx.results["interrupted"] = {"stage": key, "checkpoint": ctx.results.get("last_checkpoint")}
    _write_partial(ctx)


def _save_stage(ctx: RunContext, index: int, key: str, *, interrupted: bool = False) -> None:
    from ..io import save

    path = stage_checkpoint_path(ctx.out_dir, index, key + (".interrupted" if interrupted else ""))
    ctx.model._prunekit_spec = getattr(ctx.model, "_prunekit_spec", ctx.model_spec)
    save(ctx.model, path, model_spec=ctx.model_spec, metadata={"stage": key, "interrupted": interrupted})
    ctx.results.setdefault("checkpoints", {})[key] = str(path)
    ctx.results["last_checkpoint"] = str(path)
    ctx.artifacts[f"stage_{key}"] = str(path)


def _write_partial(ctx: RunContext) -> None:
    from ..report import write_results

    ctx.results["artifacts"] = ctx.artifacts
    write_results(ctx.out_dir, ctx.results)


def _record_stop(ctx: RunContext, status: str, stage: Optional[str], exc: Optional[BaseException]) -> None:
    """Leave a valid results.json saying where and why the run stopped; never mask the original error."""
    from ..train import distributed

    ctx.results["status"] = status
    ctx.results["failed_stage" if status == "failed" else "stopped_at"] = stage
    if exc is not None:
        ctx.results["error"] = {"type": type(exc).__name__, "message": str(exc)}
    if ctx.history:
        ctx.results["history"] = ctx.history
    if not distributed.is_main():
        return
    try:
        _write_partial(ctx)
    except Exception:  # e.g. the disk is full: the original error matters more than this file
        log.warning("could not write results.json after the run %s", status, exc_info=True)


@contextlib.contextmanager
def _scratch_if_not_main(main: bool, out_dir: Path):
    """Rank 0 writes into ``out_dir``; other ranks get a private scratch folder, so a stray write can never
    collide with rank 0's files (stages that only write files do not run there at all)."""
    if main:
        yield out_dir
        return
    with tempfile.TemporaryDirectory(prefix="prunekit-rank-") as scratch:
        yield Path(scratch)


def _take_before(ctx: RunContext, mcfg: MeasureConfig) -> None:
    ctx.progress.message("measuring the model before pruning")
    t = time.perf_counter()
    ctx.teacher = clone_model(ctx.model).eval()
    ctx.results["before"] = snapshot_metrics(ctx, mcfg)
    from ..train import distributed

    if distributed.is_main():
        ctx.results["before"].update(_saved_sizes(ctx.teacher, ctx.model_spec))
    ctx.results.setdefault("timings_s", {})["measure_before"] = round(time.perf_counter() - t, 3)


def _saved_sizes(model: nn.Module, spec: dict) -> dict:
    """Bytes of the files prunekit.save writes for ``model`` (dense and sparse), so the before column counts
    what the after column counts: the final model's real files, headers included."""
    from ..io import save

    with tempfile.TemporaryDirectory(prefix="prunekit-size-") as tmp:
        dense = save(model, Path(tmp) / "model.safetensors", model_spec=spec).stat().st_size
        sparse = save(model, Path(tmp) / "model.sparse.safetensors", sparse=True, model_spec=spec).stat().st_size
    return {"size_bytes": dense, "sparse_size_bytes": sparse}


def _write_outputs(ctx: RunContext, rcfg: ReportConfig) -> None:
    from ..io import save
    from ..unstructured import sparsity_report

    ctx.model._prunekit_spec = getattr(ctx.model, "_prunekit_spec", ctx.model_spec)
    ctx.artifacts["checkpoint"] = str(save(ctx.model, ctx.out_dir / "model.safetensors", model_spec=ctx.model_spec))
    if rcfg.sparse_checkpoint:
        path = save(ctx.model, ctx.out_dir / "model.sparse.safetensors", sparse=True, model_spec=ctx.model_spec)
        ctx.artifacts["sparse_checkpoint"] = str(path)
    ctx.results["disk_bytes"] = {k: Path(v).stat().st_size for k, v in ctx.artifacts.items() if Path(v).is_file()}
    after = ctx.results.get("after") or {}
    for key, artifact in (("size_bytes", "checkpoint"), ("sparse_size_bytes", "sparse_checkpoint")):
        if artifact in ctx.results["disk_bytes"]:  # "bytes on disk" of the final model: the files as written
            after[key] = ctx.results["disk_bytes"][artifact]
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
