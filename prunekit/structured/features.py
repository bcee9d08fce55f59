"""granularity='input': plan keeping the most important input columns of the first Linear layer (feature selection)."""
from __future__ import annotations

from torch import nn

from ..graph.capture import capture
from ..match import as_patterns
from .calibrate import calibrate
from .inputs import column_scores, first_linear, select_inputs


def plan_inputs(model: nn.Module, example_inputs, part, calibration, loss_fn, given):
    """An input :class:`~prunekit.structured.planner.Plan`: the first Linear reads only the kept features
    (an InputSelectedLinear once applied; the model's inputs keep their shape)."""
    from .api import make_criterion
    from .budget import module_macs
    from .plan_build import input_plan

    captured = capture(model, example_inputs, tuple(as_patterns(part.leaf_modules, "leaf_modules")), part.tracer)
    name = first_linear(captured.gm)
    crit = make_criterion(part.criterion, part.seed)
    if crit.needs_data and "activations" not in crit.needs:
        calibrate(crit, model, None, calibration, loss_fn)
    linear = model.get_submodule(name)
    scores = column_scores(linear, name, crit, calibration)
    keep = select_inputs(scores, part.ratio)
    total, layers = module_macs(captured)
    return input_plan(model, name, scores, keep, given, total, layers)
