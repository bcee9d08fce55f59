"""The accuracy budget every schedule and search judges by: drops in percentage points of validation accuracy."""
from __future__ import annotations


def accuracy_drop_points(baseline: float, accuracy: float) -> float:
    """Accuracy drop in percentage points (accuracies are fractions in [0, 1]): 0.92 -> 0.915 is 0.5 points."""
    return (float(baseline) - float(accuracy)) * 100.0


def within_budget(baseline: float, accuracy: float, max_drop_points: float) -> bool:
    """Does ``accuracy`` stay within ``max_drop_points`` of ``baseline``? (A drop of exactly the budget meets it.)"""
    return accuracy_drop_points(baseline, accuracy) <= max_drop_points + 1e-9
