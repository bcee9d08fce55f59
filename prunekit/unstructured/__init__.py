"""Unstructured (weight) pruning with torch.nn.utils.prune-compatible masks."""
from .masks import apply_masks, effective, finalize, get_masks, global_sparsity, is_masked, set_mask, sparsity_report
from .pruner import prune_weights
from .select import select_layers

__all__ = ["apply_masks", "effective", "finalize", "get_masks", "global_sparsity", "is_masked", "set_mask",
           "sparsity_report", "prune_weights", "select_layers"]
