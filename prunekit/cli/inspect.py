"""``prunekit inspect recipe.yaml``: layers, MACs and what the recipe would prune; ``prunekit inspect DIR`` (a Hugging
Face model folder or config.json): its heads, KV groups, FFN and hidden widths, and what is left out and why."""
from __future__ import annotations

import argparse

from ..errors import ConfigError
from .console import emit, human, table

MODEL_OPTIONS = ("seq_len", "image_size", "ignore", "freeze")  # model paths only
RECIPE_OPTIONS = ("overrides",)  # recipes only


def add_parser(sub) -> None:
    p = sub.add_parser("inspect", help="show what a recipe would prune, or a Hugging Face model's prunable groups",
                       description="RECIPE: the model's layers, MACs and what the recipe would prune. MODEL (a folder "
                                   "with config.json, or a transformers config .json file): its dependency groups "
                                   "by kind (heads, KV groups, FFN, hidden width) and what is left out and why.")
    p.add_argument("path", metavar="RECIPE_OR_MODEL")
    p.add_argument("--set", dest="overrides", action="append", default=None, metavar="KEY=VALUE",
                   help="recipe only: override a recipe key")
    p.add_argument("--seq-len", type=int, default=None, help="model only: tokens in the example input (16)")
    p.add_argument("--image-size", type=int, default=None,
                   help="model only: example image size (the config's image_size, else 224)")
    p.add_argument("--ignore", action="append", default=None, metavar="PATTERN",
                   help="model only: keep these modules' output channels, as prunekit.prune(ignore=...) does")
    p.add_argument("--freeze", action="append", default=None, metavar="PATTERN",
                   help="model only: keep every group these modules touch, as prunekit.prune(freeze=...) does")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..hf.describe import is_model_path

    model_path = is_model_path(args.path)
    wrong = [o for o in (RECIPE_OPTIONS if model_path else MODEL_OPTIONS) if getattr(args, o) is not None]
    if wrong:
        flags = ", ".join("--" + ("set" if o == "overrides" else o.replace("_", "-")) for o in wrong)
        what = "a Hugging Face model" if model_path else "a recipe"
        raise ConfigError(f"{flags}: not an option for {what} ({args.path}); --set is for recipes, --seq-len, "
                          "--image-size, --ignore and --freeze for model folders")
    return run_model(args) if model_path else run_recipe(args)


# ---- a recipe -----------------------------------------------------------------------------------------------
def run_recipe(args: argparse.Namespace) -> int:
    from ..recipe.inspect import inspect_recipe

    info = inspect_recipe(args.path, args.overrides or [])
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


# ---- a Hugging Face model -----------------------------------------------------------------------------------
def run_model(args: argparse.Namespace) -> int:
    from ..hf.describe import KIND_TITLES, describe_model, load_model

    try:  # transformers' own weight-loading progress bars would interleave with this command's output
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
    except ImportError:
        pass  # load_model says transformers is missing
    model = load_model(args.path)
    d = describe_model(model, seq_len=16 if args.seq_len is None else args.seq_len, image_size=args.image_size,
                       ignore=args.ignore, freeze=args.freeze)
    inputs = ", ".join(f"{k} {tuple(v)}" for k, v in d.inputs.items())
    emit(f"model {d.model} ({args.path}): {human(d.params)} parameters; example input {inputs}")
    rows = []
    for kind, groups in d.by_kind().items():
        units = sorted({_units(g) for g in groups}, key=lambda s: (len(s), s))
        rows.append((KIND_TITLES[kind], len(groups), "; ".join(units),
                     f"{sum(g.prunable for g in groups)}/{sum(g.units for g in groups)}"))
    emit()
    _emit_table(rows, ["kind", "groups", "units per group", "prunable"])
    for name, size, kept in d.layer_stacks:
        emit(f"whole layers (granularity='block'): {name}: {size - len(kept)} of {size} removable"
             + "".join(f"; {name}.{i} stays: {why}" for i, why in sorted(kept.items())))
    emit("\ndependency groups (units removed together):")
    _emit_table([(g.index, g.kind, _units(g), f"{g.prunable}/{g.units}", _where(g)) for g in d.groups],
                ["#", "kind", "units", "prunable", "where (layers)"])
    left = d.left_out()
    if left or d.opaque:
        emit("\nleft out (not prunable safely):")
        for g in left:
            kept = "all" if g.prunable == 0 else f"{g.units - g.prunable} of"
            emit(f"  #{g.index} {g.kind} {g.where or '(model)'}: {kept} {g.units} kept: {'; '.join(g.reasons)}")
        for name, why in d.opaque:
            emit(f"  {name}: {why}")
    else:
        emit("\nleft out: nothing")
    return 0


def _units(g) -> str:
    if g.kind == "heads":
        return f"heads: {g.units} (head_dim {g.head_dim})"
    if g.kind == "kv_groups":
        return f"KV heads: {g.units} ({g.query_heads} query heads, head_dim {g.head_dim})"
    return f"{'neurons' if g.kind == 'ffn' else 'channels'}: {g.units}"


def _where(g, shown: int = 4) -> str:
    """The group's common module prefix and its layers under it (the first few)."""
    prefix = g.where + "." if g.where else ""
    names = sorted({m[0][len(prefix):] if prefix and m[0].startswith(prefix) else m[0] for m in g.members} - {g.where})
    if not names:
        return g.where
    more = f", +{len(names) - shown} more" if len(names) > shown else ""
    return f"{g.where or '(model)'}: {', '.join(names[:shown])}{more}"


def _emit_table(rows, headers) -> None:
    emit("\n".join(line.rstrip() for line in table(rows, headers).splitlines()))
