"""Importance criteria: how much each weight or channel matters. Registry: ``CRITERIA``.

A :class:`Criterion` declares what it reads in ``needs`` (``"weights"``, ``"gradients"``, ``"activations"``,
``"inputs"``); :func:`calibrate` is the one loop that feeds gradients / activations / layer inputs from calibration
batches, for weight and channel pruning alike (Wanda and SparseGPT read layer inputs). A plain callable is a criterion too (see :func:`create_criterion`): ``fn(name, weight)``
for weight pruning, ``fn(group)`` with a read-only :class:`GroupView` for channel pruning.
"""
from .base import (ACTIVATIONS, CRITERIA, GRADIENTS, INPUTS, NEEDS, WEIGHTS, Criterion, FunctionCriterion,
                   NeedsDataError, create_criterion, register_criterion)
from . import activation, bn_scale, fpgm, magnitude, sparsegpt, taylor, wanda  # noqa: F401  (fill the registry)
from .calibrate import calibrate
from .views import GroupView, MemberView, ParamSlice

__all__ = ["CRITERIA", "Criterion", "FunctionCriterion", "create_criterion", "register_criterion", "calibrate",
           "GroupView", "MemberView", "ParamSlice", "NEEDS", "WEIGHTS", "GRADIENTS", "ACTIVATIONS", "INPUTS",
           "NeedsDataError"]
