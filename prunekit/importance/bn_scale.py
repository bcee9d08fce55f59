"""BatchNorm-scale criterion (network slimming, Liu et al. 2017): a channel matters as much as its |gamma|."""
from __future__ import annotations

from .base import WEIGHTS, Criterion, register_criterion


@register_criterion("bn_scale")
class BNScale(Criterion):
    """Per channel |gamma| of the normalisation layers in its group; groups without one fall back to L2 magnitude."""

    needs = frozenset({WEIGHTS})

    def group_scores(self, group, **ctx):
        from .aggregate import aggregate, norm_along

        norms = [member for member in group.members if member.axis.kind == "chan"]
        has_gamma = any(getattr(ctx["model"].get_submodule(member.axis.module), "weight", None) is not None for member in norms)
        kw = dict(reduction=ctx.get("reduction", "mean"), normalize=ctx.get("normalize", "mean"))
        if has_gamma:
            return aggregate(group, ctx["model"], lambda n, w, d: w.detach().abs().double() if n.endswith("weight") and w.dim() == 1 else None,
                             kinds=("chan",), **kw)
        return aggregate(group, ctx["model"], lambda n, w, d: norm_along(w, d, 2), **kw)
