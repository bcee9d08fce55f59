"""Logit knowledge distillation (Hinton et al.): the unpruned teacher's softened outputs guide the student."""
from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator, List

import torch
import torch.nn.functional as F
from torch import nn

from .._inputs import first_tensor, split_inputs
from ..errors import ConfigError


@dataclass
class DistillConfig:
    """Distillation from the unpruned model during fine-tuning (recipe ``finetune.distill``)."""

    temperature: float = 4.0  # softening of both distributions; gradients scaled by T^2
    alpha: float = 0.5  # weight of the distillation term; (1 - alpha) weights the hard-label loss
    features: List[str] = field(default_factory=list)  # module names for feature distillation (empty: logits only)
    feature_weight: float = 1.0  # weight of the feature term when features are given

    def validate(self):
        if self.temperature <= 0:
            raise ConfigError(f"distill.temperature must be > 0, got {self.temperature}")
        if not 0.0 <= self.alpha <= 1.0:
            raise ConfigError(f"distill.alpha must be in [0, 1], got {self.alpha}")


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch-mean."""
    t = temperature
    log_p_s = F.log_softmax(student_logits / t, dim=-1)
    log_p_t = F.log_softmax(teacher_logits.detach() / t, dim=-1)
    return F.kl_div(log_p_s, log_p_t, reduction="batchmean", log_target=True) * (t * t)


@contextmanager
def teacher_forward(teacher: nn.Module) -> Iterator[nn.Module]:
    """Run ``teacher`` frozen for one forward: eval mode and no autograd, then its own train/eval mode back.

    The teacher itself is never changed (no ``requires_grad_(False)``, no lasting ``.eval()``), so a model
    used as a teacher can be pruned and fine-tuned afterwards exactly as it was before.
    """
    modes = [(m, m.training) for m in teacher.modules()]  # per module: some may be in eval mode on purpose
    teacher.eval()
    try:
        with torch.no_grad():
            yield teacher
    finally:
        for m, mode in modes:
            m.training = mode


class LogitDistiller:
    """loss = alpha * kd_loss(student, teacher, T) + (1 - alpha) * hard_loss.

    The teacher runs in eval mode under ``torch.no_grad()`` for each step; its parameters and train/eval
    mode are left as they are (see :func:`teacher_forward`).
    """

    def __init__(self, teacher: nn.Module, temperature: float = 4.0, alpha: float = 0.5):
        self.teacher = teacher
        self.temperature = temperature
        self.alpha = alpha

    def parameters(self):
        return []

    def loss(self, inputs, targets, student_output, hard_loss: torch.Tensor) -> torch.Tensor:
        args, kwargs = split_inputs(inputs)
        with teacher_forward(self.teacher):
            teacher_logits = first_tensor(self.teacher(*args, **kwargs))
        soft = kd_loss(first_tensor(student_output), teacher_logits, self.temperature)
        return self.alpha * soft + (1.0 - self.alpha) * hard_loss

    def close(self):
        pass


def make_distiller(teacher: nn.Module, student: nn.Module, cfg: DistillConfig, example_inputs=None):
    """The distiller a config asks for: logits only, or logits + features on named layers.

    ``example_inputs`` lets feature distillation size its adapters from a forward pass
    (needed when a named layer has no weight, e.g. a ReLU or pooling layer).
    """
    if cfg.features:
        from .feature_distill import FeatureDistiller

        return FeatureDistiller(teacher, student, layers=cfg.features, weight=cfg.feature_weight,
                                temperature=cfg.temperature, alpha=cfg.alpha, example_inputs=example_inputs)
    return LogitDistiller(teacher, cfg.temperature, cfg.alpha)
