"""``prunekit demo``: train a CNN on scikit-learn digits, prune 80% of its weights, fine-tune, report."""
from __future__ import annotations

from importlib import resources

from ..recipe import run_recipe
from .console import TqdmProgress
from .run import add_common, print_results


def demo_recipe_path() -> str:
    return str(resources.files("prunekit.recipe").joinpath("presets/demo.yaml"))


def add_parser(sub) -> None:
    p = sub.add_parser("demo", help="the embedded demo: digits CNN, 80%% sparsity, fine-tune, report (no downloads)")
    add_common(p)
    p.set_defaults(func=run)


def run(args) -> int:
    results = run_recipe(demo_recipe_path(), overrides=args.overrides, output=args.output or "runs/demo",
                         overwrite=args.overwrite,
                         progress=TqdmProgress(args.quiet))
    print_results(results)
    return 0
