"""Measure a model: quality metrics, parameters, non-zeros, MACs, bytes on disk, latency."""
from .counts import count_nonzero_params, count_params, effective_state_dict
from .macs import count_macs
from .metrics import classification_metrics
from .storage import from_sparse_state, to_sparse_state
from .summary import measure, per_layer

__all__ = [
    "classification_metrics",
    "count_macs",
    "count_nonzero_params",
    "count_params",
    "effective_state_dict",
    "from_sparse_state",
    "measure",
    "per_layer",
    "to_sparse_state",
]
