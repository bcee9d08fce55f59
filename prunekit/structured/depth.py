"""granularity='block': rank identity-skip residual blocks and plan replacing the weakest ones by nn.Identity."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import PruningError
from ..graph.capture import capture
from ..match import as_patterns, selects, to_names
from .blocks import block_scores, find_blocks


def plan_blocks(model: nn.Module, example_inputs, part, calibration, given):
    """A block :class:`~prunekit.structured.planner.Plan`: remove ``ratio`` of the candidate residual blocks,
    lowest ||f(x)|| / ||x|| on the calibration inputs first (``criterion='random'``: seeded)."""
    from .budget import module_macs
    from .plan_build import block_plan

    captured = capture(model, example_inputs, tuple(as_patterns(part.leaf_modules, "leaf_modules")), part.tracer)
    found = find_blocks(captured.gm)
    if not found:
        raise PruningError("granularity='block' found no residual block with an identity skip path (x + f(x))")
    include = to_names(model, as_patterns(part.include, "include"))
    kept = to_names(model, as_patterns(part.ignore, "ignore") + as_patterns(part.exclude, "exclude")
                    + as_patterns(part.freeze, "freeze"))
    blocks = [b for b in found if _included(b.name, model, include) and not _touches(b.name, model, kept)]
    if not blocks:
        raise PruningError(
            f"granularity='block': include={part.include} / ignore={part.ignore} / freeze={part.freeze} leave none of "
            f"the residual blocks {[b.name for b in found]} to remove; an ignored module inside a block keeps the "
            "whole block"
        )
    if _criterion_name(part.criterion) == "random":
        gen = torch.Generator().manual_seed(int(part.seed))
        scores = dict(zip([b.name for b in blocks], torch.rand(len(blocks), generator=gen).tolist()))
    else:
        batches = [b[0] for b in calibration] if calibration else [example_inputs]
        scores = block_scores(model, blocks, batches)
    count = int(math.floor(len(blocks) * part.ratio + 1e-9))
    total, layers = module_macs(captured)
    return block_plan(model, [b.name for b in blocks], scores, count, given, total, layers)


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
