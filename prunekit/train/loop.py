"""A plain train / evaluate loop: optimizer, LR schedule, early stop on validation, distillation, regularisers."""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Callable, Iterable, List, Literal, Optional

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .._inputs import first_tensor
from ..data.base import DataSplits
from ..errors import ConfigError, InputError
from ..measure.metrics import classification_metrics
from ..progress import Progress, ensure
from . import distributed

log = logging.getLogger(__name__)


@dataclass
class FitConfig:
    """Training hyper-parameters (recipe sections ``train:`` and ``finetune:``)."""

    epochs: int = 10  # passes over the training split
    lr: float = 1e-3  # peak learning rate
    optimizer: Literal["adam", "adamw", "sgd"] = "adam"
    momentum: float = 0.9  # SGD only
    weight_decay: float = 0.0
    scheduler: Literal["cosine", "step", "none"] = "cosine"  # per-step cosine decay to 0, or x0.1 every third of training
    batch_size: int = 64
    patience: Optional[int] = None  # stop after this many epochs without val-accuracy gain (None: never)
    restore_best: bool = True  # end with the weights of the best validation epoch
    max_steps_per_epoch: Optional[int] = None  # cap steps (quick runs on big data)
    label_smoothing: float = 0.0
    seed: int = 0  # shuffling seed

    def validate(self):
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclass
class FitResult:
    history: List[dict] = field(default_factory=list)  # one row per epoch
    best_epoch: int = -1
    best_val_accuracy: float = float("nan")
    stopped_early: bool = False
    interrupted: bool = False


def make_optimizer(params, cfg: FitConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


def make_scheduler(opt, cfg: FitConfig, total_steps: int):
    if cfg.scheduler == "cosine":
        return torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total_steps) / max(1, total_steps))))
    if cfg.scheduler == "step":
        every = max(1, total_steps // 3)
        return torch.optim.lr_scheduler.StepLR(opt, step_size=every, gamma=0.1)
    return None


def fit(model: nn.Module, data: DataSplits, cfg: Optional[FitConfig] = None, *, loss_fn: Optional[Callable] = None,
        teacher: Optional[nn.Module] = None, distiller=None, regularizer: Optional[Callable] = None,
        progress: Optional[Progress] = None, callbacks: Iterable[Callable] = (), stage: str = "train") -> FitResult:
    """Train ``model`` on ``data.train``, evaluate on ``data.val`` each epoch; returns the per-epoch history.

    Masks installed by prunekit/torch.nn.utils.prune hold throughout: the optimizer updates
    ``weight_orig`` and the forward pre-hook re-applies the mask. With ``teacher`` (and no
    ``distiller``) a :class:`LogitDistiller` with default temperature/alpha is used.
    Launched with ``torchrun --nproc_per_node N``, training runs under DistributedDataParallel
    with each process on its own shard of the training split.
    Ctrl-C stops training cleanly: the best weights so far are restored and
    ``result.interrupted`` is set.
    """
    cfg = cfg or FitConfig()
    cfg.validate()
    progress = ensure(progress)
    loss_fn = loss_fn or (lambda out, y: F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing))
    if teacher is not None and distiller is None:
        from .distill import LogitDistiller

        distiller = LogitDistiller(teacher)
    loader, sampler = distributed.train_loader(data.x_train, data.y_train, cfg.batch_size, cfg.seed)
    net = distributed.wrap(model)  # DDP under torchrun: gradients averaged across processes
    steps_per_epoch = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    if distiller is not None:
        params += [p for p in distiller.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg)
    sched = make_scheduler(opt, cfg, cfg.epochs * steps_per_epoch)
    result = FitResult()
    best_state = None
    bad_epochs = 0
    step = 0
    try:
        with progress.task(f"{stage}", total=cfg.epochs * steps_per_epoch) as task:
            for epoch in range(1, cfg.epochs + 1):
                if sampler is not None:
                    sampler.set_epoch(epoch)
                model.train()
                losses = []
                for i, (x, y) in enumerate(loader):
                    if i >= steps_per_epoch:
                        break
                    out = net(x)
                    loss = loss_fn(first_tensor(out), y)
                    if distiller is not None:
                        loss = distiller.loss(x, y, out, loss)
                    if regularizer is not None:
                        loss = loss + regularizer(model)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    if sched is not None:
                        sched.step()
                    step += 1
                    losses.append(float(loss.detach()))
                    task.advance()
                    for cb in callbacks:
                        cb("step", {"step": step, "epoch": epoch, "model": model, "loss": losses[-1]})
                val = evaluate(model, *data.split("val"), num_classes=data.num_classes, loss_fn=loss_fn)
                row = {"stage": stage, "epoch": epoch, "train_loss": float(np.mean(losses)) if losses else float("nan"),
                       **{f"val_{k}": v for k, v in val.items()}, "lr": opt.param_groups[0]["lr"]}
                result.history.append(row)
                task.note(loss=row["train_loss"], val_acc=val["accuracy"])
                for cb in callbacks:
                    cb("epoch_end", {"epoch": epoch, "val": val, "model": model, "row": row})
                if not (val["accuracy"] <= result.best_val_accuracy):  # first epoch or improvement (nan-safe)
                    result.best_val_accuracy, result.best_epoch = val["accuracy"], epoch
                    best_state = _snapshot(model) if cfg.restore_best else None
                    bad_epochs = 0
                else:
                    bad_epochs += 1
                    if cfg.patience is not None and bad_epochs >= cfg.patience:
                        result.stopped_early = True
                        log.info("early stop at epoch %d (best %d)", epoch, result.best_epoch)
                        break
    except KeyboardInterrupt:
        result.interrupted = True
        log.warning("training interrupted at step %d; restoring the best weights seen", step)
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result


def _snapshot(model: nn.Module) -> dict:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@torch.no_grad()
def predict(model: nn.Module, x: torch.Tensor, batch_size: int = 256, progress: Optional[Progress] = None,
            description: str = "evaluate") -> torch.Tensor:
    """Logits for ``x`` in eval mode, batched."""
    was = model.training
    model.eval()
    outs = []
    try:
        with ensure(progress).task(description, total=(len(x) + batch_size - 1) // batch_size) as task:
            for i in range(0, len(x), batch_size):
                outs.append(first_tensor(model(x[i:i + batch_size])))
                task.advance()
    finally:
        model.train(was)
    return torch.cat(outs) if outs else torch.empty(0)


def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, num_classes: Optional[int] = None,
             batch_size: int = 256, loss_fn: Optional[Callable] = None, progress: Optional[Progress] = None,
             description: str = "evaluate") -> dict:
    """Accuracy, macro recall, macro false-positive rate and mean loss on ``(x, y)``."""
    if len(x) != len(y):
        raise InputError(f"evaluate: {len(x)} inputs but {len(y)} labels")
    logits = predict(model, x, batch_size, progress, description)
    if logits.dim() != 2:
        raise InputError(f"evaluate expects (N, classes) logits, the model returned shape {tuple(logits.shape)}")
    num_classes = num_classes or logits.shape[1]
    loss_fn = loss_fn or F.cross_entropy
    metrics = classification_metrics(y.numpy(), logits.argmax(1).numpy(), num_classes)
    metrics["loss"] = float(loss_fn(logits, y))
    return metrics
