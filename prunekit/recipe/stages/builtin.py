"""The built-in stages: train from scratch, one-shot prune, recovery fine-tune (+ distillation), export."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import List, Literal, Optional

from ...errors import ConfigError
from ...modelutils import clone_model
from ...train.distill import DistillConfig, make_distiller
from ...train.loop import FitConfig, fit
from ...spec import PruneSpec
from . import ORDER_EXPORT, ORDER_FINETUNE, ORDER_PRUNE, ORDER_TRAIN, RunContext, register_stage

log = logging.getLogger(__name__)


@dataclass
class TrainConfig(FitConfig):
    """Training before pruning (recipe ``train:``)."""

    rewind_step: Optional[int] = None  # keep the weights after this many steps (0 = initialisation) as the
    # lottery-ticket rewinding point that ``schedule: {rewind: true}`` resets surviving weights to


@register_stage("train", config=TrainConfig, order=ORDER_TRAIN, help="train the model before pruning")
def run_train(ctx: RunContext, cfg: TrainConfig) -> None:
    callbacks = []
    if cfg.rewind_step is not None:
        from ...schedule.common import RewindCheckpoint

        rewind = RewindCheckpoint.capture(ctx.model) if cfg.rewind_step == 0 else RewindCheckpoint(cfg.rewind_step)
        callbacks.append(rewind)
    result = fit(ctx.model, ctx.data, cfg, loss_fn=ctx.loss_fn, progress=ctx.progress, stage="train",
                 callbacks=callbacks)
    if cfg.rewind_step is not None:
        if rewind.state is None:
            raise ConfigError(f"train.rewind_step={cfg.rewind_step} was never reached (training ran "
                              f"{sum(1 for _ in result.history)} epochs); choose a smaller step")
        ctx.extras["rewind_state"] = rewind.state
    ctx.history.extend(result.history)
    ctx.record("train", epochs=len(result.history), best_epoch=result.best_epoch,
               val_accuracy=result.best_val_accuracy, interrupted=result.interrupted)


def calibration_for(ctx: RunContext, batches: int, batch_size: int = 64):
    loader = ctx.data.loader("train", batch_size, shuffle=True, seed=ctx.seed)
    return [b for _, b in zip(range(batches), loader)]


def prune_from_config(ctx: RunContext, cfg: PruneSpec, model=None):
    """``prunekit.prune`` on ``model`` (default ctx.model) with the recipe's spec and calibration data; a spec
    without a seed uses the run's."""
    from ...api import prune

    spec = cfg if cfg.seed is not None else replace(cfg, seed=ctx.seed)
    return prune(model if model is not None else ctx.model, ctx.example_inputs, spec,
                 calibration=calibration_for(ctx, spec.calibration_batches), loss_fn=ctx.loss_fn)


def check_prune(ctx: RunContext, cfg: PruneSpec) -> None:
    """Pre-flight: option names and module patterns of ``prune:`` against the model, before anything trains."""
    from ...api import check_prune_request

    spec = check_prune_request(ctx.model, None, cfg, calibration=(), loss_fn=ctx.loss_fn)  # the run supplies
    # calibration batches from the training split, so data-driven criteria (taylor, activation) are fine here
    if spec.granularity == "weight":
        return
    from ...api import plan
    from ...errors import InputError
    from ...importance import create_criterion

    # plan on the model as built: a selection that leaves nothing to prune, or layer_ratios naming no layer that
    # produces channels, fails now instead of after training (scores do not matter here: magnitude stands in for a
    # data-driven criterion)
    probe = spec if spec.granularity == "block" or not create_criterion(spec.part().criterion).needs_data \
        else replace(spec, criterion=None)
    try:
        plan(ctx.model, ctx.example_inputs, probe)
    except InputError:  # an earlier stage (reduce) changes what the model reads: the prune stage checks then
        log.debug("prune pre-flight plan skipped: the model does not read the data's inputs yet")


@register_stage("prune", config=PruneSpec, order=ORDER_PRUNE, check=check_prune, help="one-shot pruning")
def run_prune(ctx: RunContext, cfg: PruneSpec) -> None:
    ctx.model = prune_from_config(ctx, cfg)
    if cfg.latency_target is not None:
        from ...report.results import to_jsonable
        from ...structured.latency import latency_report

        report = latency_report(ctx.model)
        if report:  # the report's "Latency target" section: predicted vs measured, checks, per-layer widths
            ctx.results["latency"] = to_jsonable(report)
    ctx.record("prune", granularity=cfg.granularity, criterion=_name(cfg.criterion_or_default), ratio=cfg.ratio,
               scope=cfg.scope_or_default,
               **size_counts(ctx.model, ctx.example_inputs))


def _name(criterion) -> str:
    return criterion if isinstance(criterion, str) else getattr(criterion, "name", type(criterion).__name__)


def size_counts(model, example_inputs) -> dict:
    """params / nonzero_params / macs / nonzero_macs without timing (cheap, for per-stage rows)."""
    from ...api import measure

    m = measure(model, example_inputs, latency=False)
    return {k: m[k] for k in ("params", "nonzero_params", "macs", "nonzero_macs") if k in m}


@dataclass
class FinetuneConfig(FitConfig):
    """Recovery fine-tuning after pruning; ``distill`` turns on distillation from the unpruned model."""

    distill: Optional[DistillConfig] = None


@register_stage("finetune", config=FinetuneConfig, order=ORDER_FINETUNE, help="recover accuracy after pruning")
def run_finetune(ctx: RunContext, cfg: FinetuneConfig) -> None:
    distiller = None
    if cfg.distill is not None:
        if ctx.teacher is None:
            raise ConfigError("finetune.distill needs the unpruned model as teacher, but the run has none")
        distiller = make_distiller(clone_model(ctx.teacher), ctx.model, cfg.distill, ctx.example_inputs)
    try:
        result = fit(ctx.model, ctx.data, cfg, loss_fn=ctx.loss_fn, distiller=distiller, progress=ctx.progress,
                     stage="finetune")
    finally:
        if distiller is not None:
            distiller.close()
    ctx.history.extend(result.history)
    ctx.record("finetune", epochs=len(result.history), best_epoch=result.best_epoch,
               val_accuracy=result.best_val_accuracy, distill=cfg.distill is not None, interrupted=result.interrupted)


@dataclass
class ExportConfig:
    formats: List[Literal["onnx", "torchscript"]] = field(default_factory=lambda: ["onnx"])  # files written to output/
    verify: bool = True  # run each file on the example input, a second different input and test data vs eager PyTorch
    atol: Optional[float] = None  # tolerance atol + rtol * max|output|; None: 1e-4 (ONNX), 1e-5 (TorchScript)
    rtol: Optional[float] = None


@register_stage("export", config=ExportConfig, order=ORDER_EXPORT, main_only=True, help="export the final model")
def run_export(ctx: RunContext, cfg: ExportConfig) -> None:
    """Write each format; with ``verify`` a file is kept only once it matches eager PyTorch on the example
    input, a second different input and a batch of test data (an ExportError otherwise, nothing written)."""
    from ...export import export_verified

    x_test = getattr(ctx.data, "x_test", None)
    check_inputs = {"test data": x_test[:64]} if cfg.verify and x_test is not None and len(x_test) else None
    for fmt in cfg.formats:
        path = ctx.out_dir / ("model.onnx" if fmt == "onnx" else "model.torchscript.pt")
        result = export_verified(ctx.model, ctx.example_inputs, path, fmt=fmt, verify=cfg.verify, atol=cfg.atol,
                                 rtol=cfg.rtol, check_inputs=check_inputs)
        ctx.artifacts[fmt] = str(result.path)
        row = {"format": fmt, "path": str(result.path), "verified": result.verification is not None}
        if result.verification is not None:  # max_abs_diff overall and per input (example, second, test_data)
            row.update(result.verification.row())
        ctx.record("export", **row)
