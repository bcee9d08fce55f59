"""Worker for test_distributed: fine-tune a masked MLP under torchrun and dump its final state.

Then a second fit whose loss turns NaN on rank 1 only: every rank must stop at the same step with a
TrainingError (none may hang in the next all-reduce) and hold its pre-training weights again.
"""
import sys

import torch
import torch.nn.functional as F
from torch import nn

import prunekit
from prunekit.data.base import DataSplits
from prunekit.errors import TrainingError
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

calls = {"n": 0}


def nan_on_rank1(out, y):
    loss = F.cross_entropy(out, y)
    if out.requires_grad:
        calls["n"] += 1
        if calls["n"] == 2 and distributed.rank() == 1:  # 2 steps an epoch: still epoch 1
            return loss * float("nan")
    return loss


other = nn.Sequential(nn.Linear(8, 4), nn.ReLU(), nn.Linear(4, 2))
before = {k: v.clone() for k, v in other.state_dict().items()}
try:
    fit(other, data, FitConfig(epochs=2, lr=0.05), loss_fn=nan_on_rank1)
    diverged_at = -1
except TrainingError as err:
    diverged_at = err.step
distributed.barrier()
state["diverged_at"] = torch.tensor(diverged_at)
state["restored"] = torch.tensor(all(torch.equal(other.state_dict()[k], v) for k, v in before.items()))
torch.save(state, f"{sys.argv[1]}/rank{distributed.rank()}.pt")
distributed.exit_rank(0)  # not interpreter finalization: it can abort a gloo rank after success
