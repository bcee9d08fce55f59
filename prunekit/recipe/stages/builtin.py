"""The built-in stages: train from scratch, one-shot prune, recovery fine-tune (+ distillation), export."""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Dict, List, Literal, Optional

from ...errors import ConfigError
from ...modelutils import clone_model
from ...train.distill import DistillConfig, make_distiller
from ...train.loop import FitConfig, fit
from ...unstructured.select import check_ratio
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


@dataclass
class PruneConfig:
    """One-shot pruning (recipe ``prune:``); every key maps onto ``prunekit.prune``'s arguments."""

    granularity: Literal["weight", "channel", "block", "input"] = "weight"
    criterion: str = "l1"  # registered criterion name (l1, l2, random, taylor, bn_scale, fpgm, ...)
    ratio: Optional[float] = 0.5  # fraction to remove
    threshold: Optional[float] = None  # weight pruning: keep score > threshold instead of a ratio
    scope: Literal["global", "local"] = "global"
    layer_ratios: Dict[str, float] = field(default_factory=dict)  # name pattern -> ratio
    include: Optional[List[str]] = None  # name patterns to prune (weight pruning)
    exclude: List[str] = field(default_factory=list)  # name patterns never pruned
    include_types: Optional[List[str]] = None  # e.g. [Linear, Conv2d]
    macs_target: Optional[float] = None  # structured: fraction of the original MACs to keep
    round_to: Optional[int] = None  # structured: kept channels rounded to a multiple
    calibration_batches: int = 8  # batches for data-driven criteria (taylor, activation)
    ignore: List[str] = field(default_factory=list)  # structured: module names/patterns left untouched
    layer_floor: float = 0.1  # structured, global scope: every group keeps at least this fraction
    reduction: Literal["mean", "sum", "max", "prod"] = "mean"  # structured: combine a group's per-layer scores
    normalize: Literal["mean", "max", "sum", "none"] = "mean"  # structured: per-layer score normalisation
    leaf_modules: List[str] = field(default_factory=list)  # structured: module names fx must not trace into
    tracer: Literal["auto", "fx", "export"] = "auto"  # structured: graph capture

    def validate(self):
        if self.threshold is None and self.ratio is not None:
            try:
                check_ratio(self.ratio, "prune.ratio")
            except ValueError as exc:
                raise ConfigError(str(exc)) from None
        if self.threshold is not None and self.threshold < 0:
            raise ConfigError(f"prune.threshold must be >= 0, got {self.threshold}")

    def kwargs(self) -> dict:
        out = dict(granularity=self.granularity, criterion=self.criterion, ratio=self.ratio, threshold=self.threshold,
                   scope=self.scope, layer_ratios=self.layer_ratios or None, exclude=self.exclude or None,
                   macs_target=self.macs_target, round_to=self.round_to)
        out.update(include=self.include, include_types=self.include_types)
        if self.granularity == "weight":
            out.update(calibration_batches=self.calibration_batches)
        else:
            out.update(ignore=self.ignore or None, layer_floor=self.layer_floor, reduction=self.reduction,
                       normalize=self.normalize, leaf_modules=tuple(self.leaf_modules), tracer=self.tracer)
        return out


def calibration_for(ctx: RunContext, batches: int, batch_size: int = 64):
    loader = ctx.data.loader("train", batch_size, shuffle=True, seed=ctx.seed)
    return [b for _, b in zip(range(batches), loader)]


def prune_from_config(ctx: RunContext, cfg: PruneConfig, model=None):
    """``prunekit.prune`` on ``model`` (default ctx.model) with the recipe's settings and calibration data."""
    from ...api import prune

    return prune(model if model is not None else ctx.model, ctx.example_inputs, **cfg.kwargs(),
                 calibration=calibration_for(ctx, cfg.calibration_batches), loss_fn=ctx.loss_fn, seed=ctx.seed)


def check_prune(ctx: RunContext, cfg: PruneConfig) -> None:
    """Pre-flight: option names and name patterns of ``prune:`` against the model, before anything trains."""
    from ...api import check_prune_request

    check_prune_request(ctx.model, None, **cfg.kwargs(), calibration=(), loss_fn=ctx.loss_fn)  # the run supplies
    # calibration batches from the training split, so data-driven criteria (taylor, activation) are fine here


@register_stage("prune", config=PruneConfig, order=ORDER_PRUNE, check=check_prune, help="one-shot pruning")
def run_prune(ctx: RunContext, cfg: PruneConfig) -> None:
    ctx.model = prune_from_config(ctx, cfg)
    ctx.record("prune", granularity=cfg.granularity, criterion=cfg.criterion, ratio=cfg.ratio, scope=cfg.scope,
               **size_counts(ctx.model, ctx.example_inputs))


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
