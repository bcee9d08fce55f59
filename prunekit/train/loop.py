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
from ..errors import ConfigError, InputError, TrainingError
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
    grad_clip: Optional[float] = None  # clip the global gradient norm to this value each step (None: off)
    seed: int = 0  # shuffling seed

    def validate(self):
        if self.epochs < 0:
            raise ConfigError(f"epochs must be >= 0, got {self.epochs}")
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.grad_clip is not None and not self.grad_clip > 0:
            raise ConfigError(f"grad_clip must be > 0 (or null: off), got {self.grad_clip}")


@dataclass
class FitResult:
    """What :func:`fit` reports; the model itself is trained in place."""

    history: List[dict] = field(default_factory=list)  # one row per completed epoch
    best_epoch: int = -1  # epoch of the best validation accuracy (-1: no epoch completed)
    best_val_accuracy: float = float("nan")
    stopped_early: bool = False  # patience ran out
    interrupted: bool = False  # Ctrl-C stopped training; the best completed epoch's weights are restored


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
    ``distiller``) a :class:`LogitDistiller` with default temperature/alpha is used; the teacher
    runs in eval mode without gradients and is handed back unchanged (parameters, ``requires_grad``
    flags, train/eval mode).
    Launched with ``torchrun --nproc_per_node N``, training runs under DistributedDataParallel
    with each process on its own shard of the training split: ``batch_size`` is per process, and N
    processes with ``batch_size=b`` take the same steps as one process with ``batch_size=N*b`` and the
    same seed (one shuffle of the split per epoch from ``seed + epoch``, rank r taking every N-th sample
    from r: see :func:`prunekit.train.distributed.train_loader`; DDP averages the ranks' gradients).
    The result equals the single process's up to float rounding when the training split's size is a
    multiple of N and nothing else depends on the per-process batch (BatchNorm's batch statistics are
    per process; dropout draws differ per process). Every rank ends with the same weights, and the
    history's ``train_loss`` is the mean over every process's steps.

    Faults:

    * NaN / inf features, non-integer labels or labels outside ``0..num_classes-1`` in the train or
      val split raise :class:`InputError` before the first step; so do non-finite model weights.
    * A loss that becomes NaN / inf, or weights that do after an optimizer step, raise
      :class:`TrainingError` (stage, epoch, step and the likely fixes in the message). Before it is
      raised the model goes back to finite weights: the best epoch's (``restore_best``), else the
      last completed epoch's, else the ones it came in with. The error carries ``.result`` (the
      :class:`FitResult` with the history so far), ``.stage``, ``.epoch`` and ``.step``.
    * Ctrl-C (``KeyboardInterrupt``) stops training cleanly and is not re-raised: the best weights
      of the completed epochs are restored (``restore_best``; with no completed epoch, or
      ``restore_best=False``, the weights reached so far stay, unless they are non-finite) and
      ``result.interrupted`` is True. A caller running several stages should stop after an
      interrupted one (the recipe runner does).
    """
    cfg = cfg or FitConfig()
    cfg.validate()
    data.validate(("train", "val"), where=f"stage {stage!r}")
    bad = _nonfinite_tensors(model)
    if bad:
        raise InputError(f"stage {stage!r}: the model already holds non-finite weights before training ({_names(bad)}); "
                         "load a healthy checkpoint or re-initialise the model")
    progress = ensure(progress)
    loss_fn = loss_fn or (lambda out, y: F.cross_entropy(out, y, label_smoothing=cfg.label_smoothing))
    own_distiller = teacher is not None and distiller is None
    if own_distiller:
        from .distill import LogitDistiller

        distiller = LogitDistiller(teacher)
    loader, sampler = distributed.train_loader(data.x_train, data.y_train, cfg.batch_size, cfg.seed)
    net = distributed.wrap(model)  # DDP under torchrun: gradients all-reduced across processes
    steps_per_epoch = len(loader) if cfg.max_steps_per_epoch is None else min(len(loader), cfg.max_steps_per_epoch)
    params = [p for p in model.parameters() if p.requires_grad]
    if distiller is not None:
        params += [p for p in distiller.parameters() if p.requires_grad]
    opt = make_optimizer(params, cfg)
    sched = make_scheduler(opt, cfg, cfg.epochs * steps_per_epoch)
    result = FitResult()
    best_state = None
    safe = _Weights(model, "the weights it had before training")  # finite weights to go back to if training diverges
    bad_epochs = 0
    step = 0
    epoch = 0
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
                    value = float(loss.detach())
                    if not distributed.agree(math.isfinite(value)):  # every process stops at the same step
                        raise _diverged(model, cfg, stage, epoch, step + 1, i + 1, steps_per_epoch, value,
                                        losses[-1] if losses else None)
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    if cfg.grad_clip is not None:
                        torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                    opt.step()
                    if sched is not None:
                        sched.step()
                    step += 1
                    losses.append(value)
                    task.advance()
                    for cb in callbacks:
                        cb("step", {"step": step, "epoch": epoch, "model": model, "loss": losses[-1]})
                if not distributed.agree(not _nonfinite_tensors(model)):  # e.g. the last step's gradients overflowed
                    raise _diverged(model, cfg, stage, epoch, step, steps_per_epoch, steps_per_epoch, None,
                                    losses[-1] if losses else None)
                val = evaluate(model, *data.split("val"), num_classes=data.num_classes, loss_fn=loss_fn)
                row = {"stage": stage, "epoch": epoch, "train_loss": _mean_loss(losses),
                       **{f"val_{k}": v for k, v in val.items()}, "lr": opt.param_groups[0]["lr"]}
                result.history.append(row)
                task.note(loss=row["train_loss"], val_acc=val["accuracy"])
                for cb in callbacks:
                    cb("epoch_end", {"epoch": epoch, "val": val, "model": model, "row": row})
                if not cfg.restore_best:
                    safe = _Weights(model, f"the weights of epoch {epoch}, the last completed one")
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
        log.warning("%s: training interrupted at step %d; restoring the best weights seen", stage, step)
        if best_state is None and _nonfinite_tensors(model):
            safe.restore(model)
    except TrainingError as err:
        where = _go_back(model, best_state, result, safe)
        err.args = (f"{err.args[0] if err.args else 'training diverged.'} The model was put back to {where}.",)
        err.result, err.stage, err.epoch = result, stage, epoch
        model.eval()
        raise
    finally:
        if own_distiller:
            distiller.close()
    if best_state is not None:
        model.load_state_dict(best_state)
    model.eval()
    return result


def _mean_loss(losses: List[float]) -> float:
    """The mean step loss of the epoch; under torchrun over every process's steps (one all-reduce)."""
    if distributed.active():
        total = distributed.all_reduce_sums({"sum": torch.tensor(sum(losses), dtype=torch.float64),
                                             "steps": torch.tensor(len(losses), dtype=torch.int64)})
        return float(total["sum"]) / int(total["steps"]) if int(total["steps"]) else float("nan")
    return float(np.mean(losses)) if losses else float("nan")


def _diverged(model: nn.Module, cfg: FitConfig, stage: str, epoch: int, step: int, batch: int, batches: int,
              loss: Optional[float], previous: Optional[float]) -> TrainingError:
    """The TrainingError for a non-finite loss (``loss`` given) or non-finite weights (``loss`` None)."""
    bad = _nonfinite_tensors(model)
    at = f"epoch {epoch}, step {step} (batch {batch} of {batches})"
    if loss is not None and not bad:
        what = (f"the loss became {loss} at {at}" if not math.isfinite(loss) else
                f"the loss became non-finite on another process at {at}")  # finite here
    else:
        last = f" (whose loss was finite, {previous:.4g})" if previous is not None else ""
        after = step - 1 if loss is not None else step
        what = (f"the weights became non-finite ({_names(bad)}) after optimizer step {after}{last}, so the gradients "
                f"overflowed; detected at {at}")
    err = TrainingError(
        f"stage {stage!r}: training diverged: {what}. Likely fixes: lower the learning rate (lr is {cfg.lr:g}), clip the "
        f"gradients (grad_clip, e.g. 1.0), and check the data and the loss function (log of 0, division by zero)."
    )
    err.step = step
    return err


def _go_back(model: nn.Module, best_state: Optional[dict], result: FitResult, safe: "_Weights") -> str:
    """Load the best epoch's weights (else ``safe``) into a diverged model; returns what it now holds."""
    if best_state is not None:
        try:
            model.load_state_dict(best_state)
            return f"the weights of its best epoch ({result.best_epoch})"
        except RuntimeError as exc:  # the structure changed since (a callback pruned it): fall back below
            log.warning("cannot restore the best epoch's weights (%s); using %s", exc, safe.description)
    safe.restore(model)
    bad = _nonfinite_tensors(model)
    if bad:
        return f"{safe.description}, but {_names(bad)} are still non-finite (they were created during training)"
    return safe.description


class _Weights:
    """A CPU copy of every float tensor of ``model.state_dict()``, restored in place by tensor identity.

    Identity, not state-dict keys: a mask installed during training renames ``weight`` to
    ``weight_orig`` (same tensor), which ``load_state_dict`` of an older snapshot would refuse.
    """

    def __init__(self, model: nn.Module, description: str):
        self.description = description
        seen = set()
        self.pairs = []
        for t in model.state_dict(keep_vars=True).values():
            if isinstance(t, torch.Tensor) and t.is_floating_point() and id(t) not in seen:
                seen.add(id(t))
                self.pairs.append((t, t.detach().to("cpu", copy=True)))

    @torch.no_grad()
    def restore(self, model: nn.Module) -> None:
        for t, saved in self.pairs:
            if t.shape == saved.shape:
                t.copy_(saved)


def _nonfinite_tensors(model: nn.Module) -> List[str]:
    """Names of the model's float parameters / buffers holding NaN or inf."""
    state = model.state_dict(keep_vars=True)
    names = [k for k, t in state.items() if isinstance(t, torch.Tensor) and t.is_floating_point()]
    if not names:
        return []
    flags = torch.stack([torch.isfinite(state[k].detach()).all().cpu() for k in names])  # one sync for all tensors
    if bool(flags.all()):
        return []
    return [k for k, ok in zip(names, flags.tolist()) if not ok]


def _names(names: List[str]) -> str:
    shown = ", ".join(names[:4])
    return shown + (f" and {len(names) - 4} more" if len(names) > 4 else "")


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
    bad = ~torch.isfinite(logits)
    if bool(bad.any()):  # argmax of a NaN row is arbitrary: the metrics below are not to be trusted
        rows = int(bad.any(dim=1).sum())
        log.warning("%s: the model's logits hold NaN / inf in %d of %d samples (the first is sample %d); the metrics "
                    "are unreliable: check the model's weights and the inputs", description, rows, len(logits),
                    int(torch.argmax(bad.any(dim=1).to(torch.uint8))))
    metrics = classification_metrics(y.numpy(), logits.argmax(1).numpy(), num_classes)
    metrics["loss"] = float(loss_fn(logits, y))
    return metrics
