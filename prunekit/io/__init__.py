"""Saving and loading pruned models without pickled code."""
from .checkpoint import load, read_checkpoint, save

__all__ = ["load", "read_checkpoint", "save"]
