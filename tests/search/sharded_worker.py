"""Worker for test_sharded: the digits sweeps and searches, in one process or as one rank of a torchrun job.

Writes ``<out>/<tag>.json`` (every result as JSON data) and ``<out>/<tag>.pt`` (the chosen models' weights),
``tag`` being ``single`` in one process and ``rank<r>`` under torchrun.
"""
import json
import sys

import torch

import prunekit
from prunekit import collective
from prunekit.data import load_data
from prunekit.data.config import DataConfig
from prunekit.models import create_model
from prunekit.recipe.schema import from_dict
from prunekit.search import shard
from prunekit.search import Recovery, budget_search, layerwise_search, pareto_sweep, sensitivity
from prunekit.train import FitConfig, distributed, fit

torch.set_num_threads(1)
distributed.maybe_init()
out = sys.argv[1]
tag = f"rank{collective.rank()}" if collective.active() else "single"

torch.manual_seed(0)
data = load_data(from_dict(DataConfig, {"name": "digits", "normalize": "unit"}, "data"))
model = create_model("mlp", in_features=64, hidden=[32, 16], num_classes=10, dropout=0.2)  # dropout draws the RNG
with collective.alone():  # every rank trains the same model as one process would (no DDP)
    fit(model, data, FitConfig(epochs=3, lr=0.01))
torch.manual_seed(1)  # the sweeps below must not depend on which rank runs which probe
finetune = FitConfig(epochs=1, lr=0.003, max_steps_per_epoch=4, restore_best=False)
recovery = Recovery.default(data, data.example_inputs(1), finetune=finetune)

sens = sensitivity(model, Recovery.default(data, data.example_inputs(1)), ratios=[0.3, 0.6, 0.9])
pareto = pareto_sweep(model, recovery, ratios=[0.5, 0.8, 0.95])
search = budget_search(model, recovery, max_accuracy_drop=1.0, hi=0.95, tol=0.04, max_probes=5)
layerwise = layerwise_search(model, recovery, max_accuracy_drop=2.0, sens=sens, shrink=0.5, max_tries=3)
result = {"world": collective.world_size(), "rng_after": float(torch.rand(1)),
          "sensitivity": sens.summary(), "pareto": pareto,
          "search": {"ratio": search.ratio, "best": search.best, "probes": search.probes, "histories": search.histories,
                     "speculative": search.extra.get("speculative_probes", [])},
          "layerwise": {"ratio": layerwise.ratio, "probes": layerwise.probes, "histories": layerwise.histories}}
with open(f"{out}/{tag}.json", "w") as f:
    json.dump(result, f)
# share_model the other way round: the last rank holds a masked layer, every other rank rebuilds a random one
torch.manual_seed(100 + collective.rank())
held = prunekit.prune(torch.nn.Sequential(torch.nn.Linear(6, 4)), None, ratio=0.5)
shared = shard.share_model(held if collective.rank() == collective.world_size() - 1 else None,
                           lambda: prunekit.prune(torch.nn.Sequential(torch.nn.Linear(6, 4)), None, ratio=0.5))
torch.save({"search": search.model.state_dict(), "layerwise": layerwise.model.state_dict(),
            "shared": shared.state_dict(), "shared_weight": shared[0].weight.detach().clone()}, f"{out}/{tag}.pt")
distributed.exit_rank(0)  # not interpreter finalization: it can abort a gloo rank after success
