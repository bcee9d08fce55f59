"""granularity='block': rank identity-skip residual blocks and replace the weakest ones by nn.Identity."""
from __future__ import annotations

import math

import torch
from torch import nn

from ..errors import PruningError
from ..graph.capture import capture
from .blocks import block_scores, find_blocks, replace_blocks
from .plan import get_plan, merge_plans, set_plan
from .remove import empty_plan


def prune_blocks(model: nn.Module, example_inputs, cfg, calibration) -> nn.Module:
    """Remove ``ratio`` of the residual blocks (identity skip only), lowest ||f(x)||/||x|| first (random: seeded)."""
    captured = capture(model, example_inputs, cfg.leaf_modules, cfg.tracer)
    found = find_blocks(captured.gm)
    if not found:
        raise PruningError("granularity='block' found no residual block with an identity skip path (x + f(x))")
    blocks = [b for b in found if _included(b.name, model, cfg.include) and not _ignored(b.name, model, cfg.ignore or [])]
    if not blocks:
        raise PruningError(
            f"granularity='block': include={cfg.include} / ignore={cfg.ignore} leave none of the residual blocks "
            f"{[b.name for b in found]} to remove; an ignored module inside a block keeps the whole block"
        )
    if _criterion_name(cfg.criterion) == "random":
        gen = torch.Generator().manual_seed(int(cfg.seed))
        scores = dict(zip([b.name for b in blocks], torch.rand(len(blocks), generator=gen).tolist()))
    else:
        batches = [b[0] for b in calibration] if calibration else [example_inputs]
        scores = block_scores(model, blocks, batches)
    count = int(math.floor(len(blocks) * cfg.ratio + 1e-9))
    ranked = sorted(blocks, key=lambda b: (scores[b.name], b.name))
    names = sorted(b.name for b in ranked[:count])
    replace_blocks(model, names)
    plan = empty_plan()
    plan["removed_blocks"] = names
    plan["block_scores"] = {k: float(v) for k, v in scores.items()}
    set_plan(model, merge_plans(get_plan(model), plan))
    return model


def _criterion_name(spec) -> str:
    return spec if isinstance(spec, str) else getattr(spec, "name", "")


def _ignored(name, model, patterns) -> bool:
    """The block, a module containing it, or a module inside it is ignored (removing the block would touch it)."""
    from .api import _matches

    if not patterns:
        return False
    inside = [(n, m) for n, m in model.get_submodule(name).named_modules(prefix=name)]
    return any(_matches(n, m, patterns) for n, m in inside)


def _included(name, model, patterns) -> bool:
    """No include: every block is a candidate; else the block (or a module containing it) must match."""
    from .api import _matches

    return not patterns or _matches(name, model.get_submodule(name), patterns)
