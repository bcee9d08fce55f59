"""Recipes: a YAML file that runs the whole job (data, model, stages, measurement, report)."""
from .loader import load_recipe
from .runner import build_model, check_recipe, run_recipe
from .schema import from_dict, to_dict
from .stages import STAGES, RunContext, register_stage
from .loader import import_builtin_stages

import_builtin_stages()  # register train, prune, finetune, export, reduce, regularize, analyze, schedule, search

__all__ = ["load_recipe", "build_model", "run_recipe", "check_recipe", "from_dict", "to_dict", "STAGES", "RunContext", "register_stage"]
