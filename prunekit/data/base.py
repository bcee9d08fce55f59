"""DataSplits: the train / validation / test tensors every stage of a run shares."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch.utils.data import DataLoader, TensorDataset


@dataclass
class DataSplits:
    """Tensors of one classification task. ``x_*`` are float features, ``y_*`` int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    num_classes: int
    name: str = "data"
    class_names: Optional[list] = None
    info: dict = field(default_factory=dict)  # e.g. {"source": path, "subset": n}

    @property
    def input_shape(self) -> tuple:
        """Shape of one sample (without the batch dimension)."""
        return tuple(self.x_train.shape[1:])

    def loader(self, split: str, batch_size: int = 64, shuffle: bool = False, seed: int = 0) -> DataLoader:
        x, y = self.split(split)
        gen = torch.Generator()
        gen.manual_seed(seed)
        return DataLoader(TensorDataset(x, y), batch_size=batch_size, shuffle=shuffle, generator=gen)

    def split(self, split: str) -> tuple[torch.Tensor, torch.Tensor]:
        if split not in ("train", "val", "test"):
            raise ValueError(f"split must be 'train', 'val' or 'test', got {split!r}")
        return getattr(self, f"x_{split}"), getattr(self, f"y_{split}")

    def example_inputs(self, batch_size: int = 1) -> torch.Tensor:
        return self.x_train[:batch_size].clone()

    def replace(self, **changes) -> "DataSplits":
        from dataclasses import replace

        return replace(self, **changes)
