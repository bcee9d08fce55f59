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
    if info["groups"]:
        emit("\ndependency groups (channels removed together):")
        rows = [(g.get("index", i), g.get("kind", "group"), f"{g.get('prunable', 0)}/{g.get('channels', '?')}",
                 ", ".join(_member(m) for m in g.get("members", [])))
                for i, g in enumerate(info["groups"])]
        emit(table(rows, ["#", "kind", "prunable", "members (layer: out = output channels, in = input channels)"]))
    if info["left_out"]:
        emit("\nleft out (not prunable safely):")
        for item in info["left_out"]:
            emit(f"  {item['name']}: {item['reason']}")
    if info.get("plan") is not None:
        emit("\nplan (what prune: removes from each group; scores of the model as built):")
        emit(info["plan"].table(all_groups=False))
    return 0


def _member(m) -> str:
    name, kind, dim = m[0], m[1], m[2]
    return f"{name} ({kind} {'out' if dim == 0 else 'in'})"
