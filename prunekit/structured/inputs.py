"""Input-feature pruning: drop input columns of the first Linear layer (learned feature selection)."""
from __future__ import annotations

import math
from typing import Any, Dict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..errors import PruningError

PASS_MODULES = (nn.Flatten, nn.Dropout, nn.Identity)
PASS_OPS = {"flatten", "contiguous", "float", "to", "view", "reshape", torch.flatten, F.dropout}


class InputSelectedLinear(nn.Linear):
    """A Linear that reads only the input features listed in its ``input_index`` buffer (the kept columns)."""

    prunekit_leaf = True  # graph capture keeps it whole: its outputs prune like any Linear's

    def __init__(self, in_features: int, out_features: int, bias: bool = True, *, input_index=None, full_in_features: int = 0):
        super().__init__(in_features, out_features, bias=bias)
        index = torch.arange(in_features) if input_index is None else torch.as_tensor(input_index, dtype=torch.long)
        self.register_buffer("input_index", index)
        self.full_in_features = int(full_in_features or in_features)  # features the model still accepts

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x.index_select(-1, self.input_index), self.weight, self.bias)


def first_linear(gm) -> str:
    """Name of the Linear that reads a model input directly (through flatten / dropout / reshape only)."""
    frontier = [n for n in gm.graph.nodes if n.op == "placeholder"]
    seen = set()
    while frontier:
        node = frontier.pop(0)
        for user in node.users:
            if user in seen:
                continue
            seen.add(user)
            if user.op == "call_module":
                mod = gm.get_submodule(user.target)
                if isinstance(mod, nn.Linear) and user.args[0] is node:
                    return str(user.target)
                if isinstance(mod, PASS_MODULES):
                    frontier.append(user)
            elif user.op in ("call_function", "call_method") and user.target in PASS_OPS and user.args[0] is node:
                frontier.append(user)
    raise PruningError("granularity='input' needs a Linear layer that reads a model input directly (after flatten at most)")


def column_scores(linear: nn.Linear, name: str, criterion, calibration) -> np.ndarray:
    """One score per input column of ``linear`` from the criterion's weight scores (summed over the column)."""
    w = linear.weight
    full = f"{name}.weight"
    if getattr(criterion, "name", "") in ("activation", "apoz"):
        if calibration is None:
            raise PruningError(f"criterion {criterion.name!r} needs calibration batches")
        xs = torch.cat([torch.as_tensor(b[0]).reshape(len(b[0]), -1) for b in calibration]).double()
        stat = xs.abs().mean(0) if criterion.name == "activation" else 1 - (xs == 0).double().mean(0)
        return (stat * w.detach().double().norm(dim=0)).numpy()
    try:
        scores = criterion.weight_scores(full, w)
    except PruningError as exc:  # never a silent substitute: say which criteria score input features
        raise PruningError(f"granularity='input' scores the columns of {name!r} with a weight criterion, and {exc}; "
                           "use a weight criterion (l1, l2, random, taylor), activation / apoz, or a callable "
                           "fn(name, weight) -> scores") from None
    return torch.as_tensor(scores).double().sum(0).numpy()


def select_inputs(scores: np.ndarray, ratio: float) -> np.ndarray:
    n = len(scores)
    drop = min(int(math.floor(n * ratio + 1e-9)), n - 1)
    order = np.argsort(scores, kind="stable")
    return np.sort(order[drop:])


def apply_input_selection(model: nn.Module, entry: Dict[str, Any]) -> None:
    """Replace the plan's Linear with an :class:`InputSelectedLinear` keeping ``entry['keep']`` columns."""
    name, keep = entry["module"], np.asarray(entry["keep"], dtype=np.int64)
    old = model.get_submodule(name)
    new = InputSelectedLinear(len(keep), old.out_features, bias=old.bias is not None, input_index=keep,
                              full_in_features=old.in_features)
    with torch.no_grad():
        new.weight.copy_(old.weight[:, torch.as_tensor(keep)])
        if old.bias is not None:
            new.bias.copy_(old.bias)
    new.to(old.weight.device)
    parent_name, _, child = name.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, new)
