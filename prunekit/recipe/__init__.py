"""Recipes: a YAML file that runs the whole job (data, model, stages, measurement, report)."""
from . import builtin_stages  # noqa: F401  (register train / prune / finetune / export)
from .loader import load_recipe
from .runner import build_model, check_recipe, run_recipe
from .schema import from_dict, to_dict
from .stages import STAGES, RunContext, register_stage

__all__ = ["load_recipe", "build_model", "run_recipe", "check_recipe", "from_dict", "to_dict", "STAGES", "RunContext", "register_stage"]
