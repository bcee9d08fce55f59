"""What a recipe would do, without doing it: the model's layers, their size and MACs, and what gets pruned."""
from __future__ import annotations

from .loader import load_recipe
from .runner import build_model
from .schema import from_dict
from .sections import ModelConfig


def inspect_recipe(source, overrides=None) -> dict:
    """``{"model", "data", "layers": [...], "prune": {...}, "groups": [...], "left_out": [...], "plan": Plan}``.

    For structured pruning ``plan`` is the :class:`~prunekit.structured.Plan` the recipe's ``prune:`` makes on
    the untrained model (what each group would lose; run on a trained checkpoint for its real scores)."""
    from ..data import load_data
    from ..data.config import DataConfig
    from ..measure import measure, per_layer
    from ..spec import PruneSpec

    recipe = load_recipe(source, overrides)
    data = load_data(from_dict(DataConfig, recipe.get("data"), "data"))
    mcfg = from_dict(ModelConfig, recipe.get("model"), "model")
    model = build_model(mcfg, data)
    example = data.example_inputs(1)
    layers = per_layer(model, example)
    totals = measure(model, example, latency=False)
    info = {"model": mcfg.name, "data": data.name, "input_shape": list(data.input_shape),
            "totals": totals, "layers": layers, "prune": None, "groups": [], "left_out": [], "plan": None}
    if "prune" not in recipe:
        return info
    spec = from_dict(PruneSpec, recipe["prune"], "prune")
    info["prune"] = {"granularity": spec.granularity, "criterion": spec.criterion_or_default, "ratio": spec.ratio,
                     "scope": spec.scope_or_default}
    if spec.granularity == "weight":
        from ..unstructured.select import layer_ratio_overrides, select_layers

        chosen = select_layers(model, include=spec.include, exclude=spec.exclude, include_types=spec.include_types)
        names = [n for n, _ in chosen]
        overrides_ = layer_ratio_overrides(names, spec.layer_ratios, model=model)
        for row in layers:
            row["pruned"] = row["name"] in names
            row["ratio"] = overrides_.get(row["name"], spec.ratio if row["pruned"] else None)
        return info
    from ..api import plan
    from ..structured import describe_groups

    if spec.granularity == "channel":
        groups = describe_groups(model, example, ignore=spec.ignore, freeze=spec.freeze,
                                 leaf_modules=spec.leaf_modules, tracer=spec.tracer)
        info["groups"] = groups
        info["left_out"] = [{"name": name, "reason": reason} for g in groups for name, reason in g.get("left_out", [])]
    seed = recipe.get("seed", 0) if spec.seed is None else spec.seed
    loader = data.loader("train", 64, shuffle=True, seed=seed)
    calibration = [b for _, b in zip(range(spec.calibration_batches), loader)]
    the_plan = plan(model, example, spec, calibration=calibration)
    info["plan"] = the_plan
    losing = {m[0] for g in the_plan.groups if g.remove for m in g.members}
    for row in layers:
        row["pruned"] = row["name"] in losing
    return info
