"""The ``regularize:`` recipe stage: sparsity-inducing training (L1 / L2 / elastic net / group lasso / BN-scale L1)."""
from __future__ import annotations

from ...train.loop import fit
from ...train.regularize import BatchNormL1, ProximalStep, RegularizeConfig, SumRegularizer, zero_group_fraction
from . import ORDER_REGULARIZE, RunContext, register_stage


@register_stage("regularize", config=RegularizeConfig, order=ORDER_REGULARIZE, check=lambda ctx, cfg: cfg.check(ctx.model),
                help="sparsity-inducing training: L1 / L2 / elastic net / group lasso / BN-scale L1")
def run_regularize(ctx: RunContext, cfg: RegularizeConfig) -> None:
    fit_cfg = cfg.fit
    terms = [t.build() for t in cfg.terms]
    smooth = [t for t in terms if not (cfg.proximal and hasattr(t, "prox"))]
    prox = [t for t in terms if cfg.proximal and hasattr(t, "prox")]
    callbacks = [ProximalStep(SumRegularizer(prox), fit_cfg.lr)] if prox else []
    result = fit(ctx.model, ctx.data, fit_cfg, loss_fn=ctx.loss_fn, regularizer=SumRegularizer(smooth) if smooth else None,
                 progress=ctx.progress, callbacks=callbacks, stage="regularize")
    ctx.history.extend(result.history)
    zero = zero_group_fraction(ctx.model, tol=cfg.zero_tol)
    bn = BatchNormL1()
    small_gamma = [float((w.detach().abs() <= cfg.zero_tol).float().mean()) for _, w in bn.tensors(ctx.model)]
    ctx.results["regularize"] = {"terms": [vars(t) for t in cfg.terms], "proximal": cfg.proximal,
                                 "near_zero_channels": zero, "penalty_end": float(SumRegularizer(terms)(ctx.model).detach())}
    ctx.record("regularize", terms=", ".join(f"{t.kind}({t.strength:g})" for t in cfg.terms), proximal=cfg.proximal,
               epochs=len(result.history), val_accuracy=result.best_val_accuracy,
               near_zero_channel_fraction=sum(zero.values()) / len(zero) if zero else 0.0,
               small_bn_scale_fraction=sum(small_gamma) / len(small_gamma) if small_gamma else None,
               interrupted=result.interrupted)

