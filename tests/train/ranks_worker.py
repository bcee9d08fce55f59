"""Worker for test_ranks_agree: under torchrun each rank calibrates and fine-tunes on its own shard, then dumps
what it got to ``<out>/rank<r>.pt``. The builders below are imported by the test too, for the one-process runs."""
import logging
import sys
from pathlib import Path

import torch
from torch import nn

import prunekit
from prunekit.data.base import DataSplits
from prunekit.importance import Criterion

CHANNEL_CRITERIA = ("taylor", "activation", "apoz")
WEIGHT_CRITERIA = ("wanda", "sparsegpt")
BATCH = 8  # per-process fine-tuning batch; the one-process reference takes world_size * BATCH


def conv_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3, padding=1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3))


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 3))


def image_batches():
    """4 calibration batches of 8x8 one-channel images (digits-sized), 3 classes; the even ones brighter, so the
    two shards (even / odd batches) would each choose other channels alone."""
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 1, 8, 8, generator=g), torch.randint(0, 3, (32,), generator=g)
    return [(x[i:i + 8] + (1.0 if i % 16 == 0 else -1.0), y[i:i + 8]) for i in range(0, 32, 8)]


def vector_data() -> DataSplits:
    g = torch.Generator().manual_seed(2)
    x = torch.randn(96, 16, generator=g)
    y = x[:, :3].argmax(1)
    return DataSplits(x[:64], y[:64], x[64:80], y[64:80], x[80:], y[80:], num_classes=3)


def vector_batches():
    data = vector_data()
    return [(data.x_train[i:i + 8], data.y_train[i:i + 8]) for i in range(0, 32, 8)]


def shard(batches, rank: int, world: int):
    return batches[rank::world]


def channel_plan(criterion: str, calibration):
    plan = prunekit.plan(conv_net(), torch.zeros(1, 1, 8, 8), granularity="channel", criterion=criterion, ratio=0.5,
                         calibration=calibration)
    return {"removed": plan.removed, "scores": [g.scores for g in plan.groups]}


def weight_state(criterion: str, calibration):
    model = prunekit.prune(mlp(), None, granularity="weight", criterion=criterion, ratio=0.5, calibration=calibration)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def prune_and_finetune(calibration, batch_size: int):
    """Channel pruning by Taylor on ``calibration``, then fine-tuning: (model, fit history)."""
    from prunekit.train import FitConfig, fit

    model = prunekit.prune(mlp(), torch.zeros(1, 16), granularity="channel", criterion="taylor", ratio=0.5,
                           calibration=calibration)
    result = fit(model, vector_data(), FitConfig(epochs=2, lr=0.01, batch_size=batch_size, restore_best=False, seed=3))
    return model, result.history


class PlugIn(Criterion):
    """A user's criterion written before all_reduce existed: it scores, but its statistics stay per process."""

    needs = frozenset({"weights", "gradients"})

    def observe(self, params):
        pass

    def weight_scores(self, name, weight):
        return weight.abs()


def main(out: Path) -> None:
    from prunekit import collective
    from prunekit.errors import PruningError
    from prunekit.importance import calibrate
    from prunekit.importance.taylor import Taylor
    from prunekit.train import distributed

    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")  # library warnings to stderr
    torch.set_num_threads(1)
    distributed.maybe_init()
    rank, world = distributed.rank(), collective.world_size()
    got = {"world_size": world}
    for c in CHANNEL_CRITERIA:
        got[f"plan/{c}"] = channel_plan(c, shard(image_batches(), rank, world))
    for c in WEIGHT_CRITERIA:
        got[f"weights/{c}"] = weight_state(c, shard(vector_batches(), rank, world))

    # keys present on one process only: the union, missing ones counting as zeros
    own = {"both": torch.tensor([1.0, 2.0]) * (rank + 1), f"only{rank}": torch.tensor([rank + 10], dtype=torch.int64)}
    got["sums"] = collective.all_reduce_sums(own)

    # an error on one process: every process raises, none waits for the others
    bad = [(torch.randn(8, 1, 8, 8),)] if rank == 1 else shard(image_batches(), rank, world)  # no targets on rank 1
    try:
        calibrate(Taylor(), conv_net(), bad)
        got["failure"] = None
    except PruningError as err:
        got["failure"] = str(err)
    try:  # no batch at all on rank 1
        calibrate(Taylor(), conv_net(), [] if rank == 1 else shard(image_batches(), rank, world))
        got["empty"] = None
    except PruningError as err:
        got["empty"] = str(err)

    calibrate(PlugIn(), conv_net(), shard(image_batches(), rank, world))  # warns: its statistics stay per process

    model, history = prune_and_finetune(shard(vector_batches(), rank, world), BATCH)
    path = out / "finetuned.safetensors"
    if distributed.is_main():
        prunekit.save(model, path)
    distributed.barrier()
    loaded = prunekit.load(path, mlp())
    got["finetuned"] = {k: v.detach().clone() for k, v in model.state_dict().items()}
    got["loaded"] = {k: v.detach().clone() for k, v in loaded.state_dict().items()}
    got["history"] = history
    torch.save(got, out / f"rank{rank}.pt")
    distributed.exit_rank(0)  # not interpreter finalization: it can abort a gloo rank after success


if __name__ == "__main__":
    main(Path(sys.argv[1]))
