"""Worker for test_distributed: fine-tune a masked MLP under torchrun and dump its final state."""
import sys

import torch
from torch import nn

import prunekit
from prunekit.data.base import DataSplits
from prunekit.train import FitConfig, distributed, fit

torch.set_num_threads(1)
distributed.maybe_init()
torch.manual_seed(0)
g = torch.Generator().manual_seed(0)
x = torch.randn(256, 8, generator=g)
y = (x[:, 0] + x[:, 1] > 0).long()
data = DataSplits(x[:192], y[:192], x[192:224], y[192:224], x[224:], y[224:], num_classes=2)
model = prunekit.prune(nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2)), None, ratio=0.5)
result = fit(model, data, FitConfig(epochs=3, lr=0.05, restore_best=False))
state = {k: v.clone() for k, v in model.state_dict().items()}
state["world_size"] = torch.tensor(torch.distributed.get_world_size())
state["steps"] = torch.tensor(len(result.history))
torch.save(state, f"{sys.argv[1]}/rank{distributed.rank()}.pt")
torch.distributed.destroy_process_group()
