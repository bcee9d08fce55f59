"""When and how much to prune: one-shot, iterative (linear / geometric / cubic paths) and AGP gradual schedules."""
from ..registry import Registry
from .common import RewindCheckpoint, ScheduleResult, rewind_weights
from .gradual import AGPCallback, AGPConfig, agp_prune, agp_schedule
from .iterative import iterative_prune, one_shot
from .paths import SPARSITY_PATHS, agp_sparsity, agp_update_steps, sparsity_path, step_ratios
from .recovery import FitFinetune, Recovery

# name -> schedule function ``(model, recovery, *, target, max_accuracy_drop, ...) -> ScheduleResult``
SCHEDULES: Registry = Registry("schedule")
SCHEDULES.add("oneshot", one_shot)
SCHEDULES.add("iterative", iterative_prune)
SCHEDULES.add("agp", agp_schedule)

__all__ = ["AGPCallback", "AGPConfig", "FitFinetune", "Recovery", "agp_prune", "SCHEDULES", "SPARSITY_PATHS", "RewindCheckpoint", "ScheduleResult", "agp_sparsity", "agp_update_steps",
           "iterative_prune", "one_shot", "rewind_weights", "sparsity_path", "step_ratios"]

from .config import ScheduleConfig  # noqa: E402  (after SCHEDULES: the config validates kind against it)

__all__ += ["ScheduleConfig"]
