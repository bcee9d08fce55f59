"""Fine-tuning: the train / evaluate loop, knowledge distillation, sparsity regularisers."""
from .distill import DistillConfig, LogitDistiller, kd_loss, make_distiller
from .loop import FitConfig, FitResult, evaluate, fit, predict

__all__ = ["DistillConfig", "LogitDistiller", "kd_loss", "make_distiller", "FitConfig", "FitResult", "evaluate", "fit", "predict"]
