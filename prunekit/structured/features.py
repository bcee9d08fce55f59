"""granularity='input': keep the most important input columns of the first Linear layer (feature selection)."""
from __future__ import annotations

from torch import nn

from ..graph.capture import capture
from .calibrate import calibrate
from .inputs import apply_input_selection, column_scores, first_linear, select_inputs
from .plan import get_plan, merge_plans, set_plan
from .remove import empty_plan


def prune_inputs(model: nn.Module, example_inputs, cfg, calibration, loss_fn) -> nn.Module:
    """Replace the first Linear by an InputSelectedLinear reading only the kept features (inputs keep their shape)."""
    from .api import make_criterion

    captured = capture(model, example_inputs, cfg.leaf_modules, cfg.tracer)
    name = first_linear(captured.gm)
    crit = make_criterion(cfg.criterion, cfg.seed)
    if getattr(crit, "needs_data", False) and not getattr(crit, "needs_activations", False):
        calibrate(crit, model, None, calibration, loss_fn)
    linear = model.get_submodule(name)
    keep = select_inputs(column_scores(linear, name, crit, calibration), cfg.ratio)
    entry = {"module": name, "keep": keep.tolist(), "in_features": linear.in_features}
    apply_input_selection(model, entry)
    plan = empty_plan()
    plan["input_features"] = entry
    set_plan(model, merge_plans(get_plan(model), plan))
    return model
