"""``prunekit run recipe.yaml [--set key=value ...]``: run a recipe and print the before/after table."""
from __future__ import annotations

from ..recipe import run_recipe
from .console import TqdmProgress, compare_table, emit


def add_parser(sub) -> None:
    p = sub.add_parser("run", help="run a recipe file end to end")
    p.add_argument("recipe", help="path to a YAML recipe (see recipes/)")
    p.add_argument("--check", action="store_true",
                   help="only validate the recipe against the model and data (keys, options, name patterns); "
                        "train nothing, write nothing")
    add_common(p)
    p.set_defaults(func=run)


def add_common(p) -> None:
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set prune.ratio=0.9 (repeatable)")
    p.add_argument("-o", "--output", help="output folder (default: the recipe's output, or runs/prunekit)")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="run even if another prunekit run holds the output folder's lock")


def run(args) -> int:
    from ..train import distributed

    if args.check:
        from ..recipe import check_recipe

        info = check_recipe(args.recipe, overrides=args.overrides)
        emit(f"recipe OK: {info['model']} on {info['data']}; stages {', '.join(info['stages'])}")
        return 0

    distributed.maybe_init()
    main_process = distributed.is_main()
    results = run_recipe(args.recipe, overrides=args.overrides, output=args.output, overwrite=args.overwrite,
                         progress=TqdmProgress(args.quiet or not main_process))
    if main_process:
        print_results(results)
    return 0


def print_results(results: dict) -> None:
    emit(compare_table(results["before"], results["after"]))
    emit()
    for stage in results.get("stages", []):
        if stage.get("rolled_back") or stage.get("message"):
            emit(f"[{stage['stage']}] {stage.get('message', 'rolled back to the last model within budget')}")
    arts = results.get("artifacts", {})
    for key in ("checkpoint", "sparse_checkpoint", "report", "onnx", "torchscript"):
        if key in arts:
            emit(f"{key:18s} {arts[key]}")
    emit(f"{'results':18s} {arts.get('results', '')}".rstrip())
    emit(f"elapsed {results.get('elapsed_s', 0):.1f} s")
