"""``prunekit inspect recipe.yaml``: layers with parameters and MACs, and which ones the recipe would prune."""
from __future__ import annotations

from ..recipe.inspect import inspect_recipe
from .console import emit, human, table


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="show the model's layers, MACs and what the recipe would prune")
    p.add_argument("recipe")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE")
    p.set_defaults(func=run)


def run(args) -> int:
    info = inspect_recipe(args.recipe, args.overrides)
    t = info["totals"]
    emit(f"model {info['model']} on {info['data']} (input {tuple(info['input_shape'])}): "
         f"{human(t['params'])} parameters, {human(t['macs'])} MACs per sample")
    rows = [(r["name"], r["type"], human(r["params"]), human(r["macs"]),
             ("yes" + (f" ({r['ratio']:g})" if r.get("ratio") is not None else "")) if r.get("pruned") else "no")
            for r in info["layers"]]
    emit(table(rows, ["layer", "type", "params", "MACs", "pruned"]))
    if info["prune"]:
        p = info["prune"]
        emit(f"\nprune: granularity={p['granularity']} criterion={p['criterion']} ratio={p['ratio']} scope={p['scope']}")
    for i, g in enumerate(info["groups"]):
        members = ", ".join(_member(m) for m in g.get("members", []))
        emit(f"group {i}: {g.get('prunable', g.get('size', '?'))} channels <- {members}")
    if info["left_out"]:
        emit("\nleft out (not prunable safely):")
        for item in info["left_out"]:
            if isinstance(item, dict):
                emit(f"  {item.get('name', item.get('layer', '?'))}: {item.get('reason', '')}")
            else:
                emit(f"  {item}")
    return 0


def _member(m) -> str:
    if isinstance(m, dict):
        return f"{m.get('name')}[{m.get('dim', '')}]"
    return str(m[0]) if isinstance(m, (list, tuple)) else str(m)
