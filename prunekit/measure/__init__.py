"""Measure a model: quality metrics, parameters, non-zeros, MACs, bytes on disk, latency."""
from .metrics import classification_metrics

__all__ = ["classification_metrics"]
