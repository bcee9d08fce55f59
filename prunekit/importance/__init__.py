"""Importance criteria: how much each weight or channel matters. Registry: ``CRITERIA``."""
from .base import CRITERIA, Criterion, FunctionCriterion, create_criterion, register_criterion
from . import activation, bn_scale, fpgm, magnitude, taylor  # noqa: F401  (fill the registry)

__all__ = ["CRITERIA", "Criterion", "FunctionCriterion", "create_criterion", "register_criterion"]
