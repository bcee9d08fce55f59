"""Where and how much to prune: accuracy-budgeted bisection, per-layer sensitivity and allocation."""
from ..schedule.recovery import Recovery
from .allocate import allocate_ratios, importance_ranking, max_safe_ratios, pareto_front
from .bisect import BisectionResult, CachedEvaluator, Probe, accuracy_drop_points, bisect_ratio, within_budget
from .budget import OBJECTIVES, SearchResult, budget_search
from .layerwise import layerwise_search
from .sensitivity import SensitivityResult, prunable_layers, sensitivity

__all__ = ["allocate_ratios", "importance_ranking", "max_safe_ratios", "pareto_front", "BisectionResult",
           "CachedEvaluator", "Probe", "accuracy_drop_points", "bisect_ratio", "within_budget", "OBJECTIVES",
           "SearchResult", "budget_search", "layerwise_search", "SensitivityResult", "prunable_layers", "sensitivity",
           "Recovery"]

from .analyze import AnalyzeConfig, pareto_sweep, weight_histograms  # noqa: E402
from .config import SearchConfig  # noqa: E402

__all__ += ["AnalyzeConfig", "SearchConfig", "pareto_sweep", "weight_histograms"]
