"""Datasets: train/val/test splits from digits, NPZ, IDX or a user function. Registry: ``DATASETS``."""
from .base import DataSplits

__all__ = ["DataSplits"]
