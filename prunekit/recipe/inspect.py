"""What a recipe would do, without doing it: the model's layers, their size and MACs, and what gets pruned."""
from __future__ import annotations

from .loader import load_recipe
from .runner import build_model
from .schema import from_dict
from .sections import ModelConfig


def inspect_recipe(source, overrides=None) -> dict:
    """``{"model", "data", "layers": [...], "prune": {...}, "groups": [...], "left_out": [...]}``."""
    from ..data import load_data
    from ..data.config import DataConfig
    from ..measure import measure, per_layer
    from .stages.builtin import PruneConfig

    recipe = load_recipe(source, overrides)
    data = load_data(from_dict(DataConfig, recipe.get("data"), "data"))
    mcfg = from_dict(ModelConfig, recipe.get("model"), "model")
    model = build_model(mcfg, data)
    example = data.example_inputs(1)
    layers = per_layer(model, example)
    totals = measure(model, example, latency=False)
    info = {"model": mcfg.name, "data": data.name, "input_shape": list(data.input_shape),
            "totals": totals, "layers": layers, "prune": None, "groups": [], "left_out": []}
    if "prune" not in recipe:
        return info
    pcfg = from_dict(PruneConfig, recipe["prune"], "prune")
    info["prune"] = {"granularity": pcfg.granularity, "criterion": pcfg.criterion, "ratio": pcfg.ratio,
                     "scope": pcfg.scope}
    if pcfg.granularity == "weight":
        from ..unstructured.select import layer_ratio_overrides, select_layers

        chosen = select_layers(model, include=pcfg.include, exclude=pcfg.exclude, include_types=pcfg.include_types)
        names = [n for n, _ in chosen]
        overrides_ = layer_ratio_overrides(names, pcfg.layer_ratios)
        for row in layers:
            row["pruned"] = row["name"] in names
            row["ratio"] = overrides_.get(row["name"], pcfg.ratio if row["pruned"] else None)
    else:
        from ..structured import describe_groups

        groups = describe_groups(model, example, ignore=pcfg.exclude or None)
        info["groups"] = groups
        info["left_out"] = [{"name": name, "reason": reason} for g in groups for name, reason in g.get("left_out", [])]
        pruned = {m[0] for g in groups if g.get("prunable", 0) > 0 for m in g.get("members", [])}
        for row in layers:
            row["pruned"] = row["name"] in pruned
    return info
