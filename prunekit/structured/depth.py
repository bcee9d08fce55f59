"""granularity='block': rank identity-skip residual blocks, or a transformer's layers, and plan removing the weakest."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import PruningError
from ..graph.capture import capture
from ..match import as_patterns, selects, to_names
from .blocks import block_scores, find_blocks
from .layers import find_layer_stacks


def plan_blocks(model: nn.Module, example_inputs, part, calibration, given):
    """A block :class:`~prunekit.structured.planner.Plan`: remove ``ratio`` of the candidate residual blocks,
    lowest ||f(x)|| / ||x|| on the calibration inputs first (``criterion='random'``: seeded)."""
    from .budget import module_macs
    from .plan_build import block_plan

    captured = capture(model, example_inputs, tuple(as_patterns(part.leaf_modules, "leaf_modules")), part.tracer)
    stacks = find_layer_stacks(model)
    if stacks:  # a transformer: its blocks are the layers of its stacks
        found = [n for s in stacks for n in s.candidates()]
        what = "layers of " + ", ".join(s.name for s in stacks)
    else:
        found = [b.name for b in find_blocks(captured.gm)]
        what = "residual blocks"
    if not found:
        raise PruningError("granularity='block' found no residual block with an identity skip path (x + f(x)) and "
                           "no stack of transformer layers (an nn.ModuleList whose length the config states)")
    include = to_names(model, as_patterns(part.include, "include"))
    kept = to_names(model, as_patterns(part.ignore, "ignore") + as_patterns(part.exclude, "exclude")
                    + as_patterns(part.freeze, "freeze"))
    blocks = [n for n in found if _included(n, model, include) and not _touches(n, model, kept)]
    if not blocks:
        raise PruningError(
            f"granularity='block': include={part.include} / ignore={part.ignore} / freeze={part.freeze} leave none of "
            f"the {what} {found} to remove; an ignored module inside a block keeps the whole block"
        )
    if _criterion_name(part.criterion) == "random":
        gen = torch.Generator().manual_seed(int(part.seed))
        scores = dict(zip(blocks, torch.rand(len(blocks), generator=gen).tolist()))
    else:
        batches = [b[0] for b in calibration] if calibration else [example_inputs]
        scores = block_scores(model, blocks, batches)
    count = int(math.floor(len(blocks) * part.ratio + 1e-9))
    total, layers = module_macs(captured)
    return block_plan(model, blocks, scores, count, given, total, layers, keep=_last_of_each(stacks, blocks, scores))


def _last_of_each(stacks, blocks, scores):
    """Per stack whose every layer is a candidate, its highest-scoring one: a stack never loses all its layers."""
    out = set()
    for s in stacks:
        mine = [n for n in s.layer_names() if n in blocks]
        if len(mine) == s.size:
            out.add(max(mine, key=lambda n: (scores[n], n)))
    return out


def _criterion_name(spec) -> str:
    return spec if isinstance(spec, str) else getattr(spec, "name", "")


def _touches(name, model, patterns) -> bool:
    """The block or a module inside it is kept (a name pattern naming a container covers the block by prefix)."""
    if not patterns:
        return False
    return any(selects(model, n, patterns) for n, _ in model.get_submodule(name).named_modules(prefix=name))


def _included(name, model, patterns) -> bool:
    """No include: every block is a candidate; else the block (or a module containing it) must match."""
    return not patterns or selects(model, name, patterns)
