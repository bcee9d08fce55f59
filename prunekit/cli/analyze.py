"""``prunekit analyze recipe.yaml``: per-layer sensitivity, weight histograms, layer ranking and Pareto plot, no pruning kept."""
from __future__ import annotations

from ..recipe import STAGES, load_recipe, run_recipe
from ..recipe.stages import ORDER_PRUNE
from .console import TqdmProgress, emit, human, table


def add_parser(sub) -> None:
    p = sub.add_parser("analyze", help="per-layer sensitivity curves, weight histograms, layer ranking, Pareto plot")
    p.add_argument("recipe", help="path to a YAML recipe (its model / data / train sections are used)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a recipe value, e.g. --set analyze.ratios=[0.5,0.9] (repeatable)")
    p.add_argument("-o", "--output", help="output folder (default: the recipe's output + '-analyze')")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bars")
    p.add_argument("--overwrite", action="store_true",
                   help="run even if another prunekit run holds the output folder's lock")
    p.set_defaults(func=run)


def analysis_recipe(recipe: dict) -> tuple:
    """The recipe cut to what comes before pruning (data, model, train, regularize...) plus an ``analyze:`` section."""
    kept, dropped = {}, []
    for key, value in recipe.items():
        if key in STAGES and key != "analyze" and STAGES.get(key).order >= ORDER_PRUNE:
            dropped.append(key)
        else:
            kept[key] = value
    kept.setdefault("analyze", {})
    if kept["analyze"] is None:
        kept["analyze"] = {}
    kept.setdefault("report", {})
    return kept, dropped


def run(args) -> int:
    from ..train import distributed

    recipe, dropped = analysis_recipe(load_recipe(args.recipe, args.overrides))
    output = args.output or (str(recipe.get("output", "runs/prunekit")).rstrip("/") + "-analyze")
    distributed.maybe_init()  # under torchrun the sweeps are shared out over the ranks; rank 0 prints and writes
    main_process = distributed.is_main()
    if dropped and not args.quiet and main_process:
        emit(f"analysing the model before pruning; skipped stages: {', '.join(dropped)}")
    results = run_recipe(recipe, output=output, overwrite=args.overwrite,
                         progress=TqdmProgress(args.quiet or not main_process))
    if not main_process:
        return 0
    print_analysis(results["analysis"])
    emit(f"\nreport   {results.get('artifacts', {}).get('report', '')}")
    emit(f"results  {output}/results.json")
    return 0


def print_analysis(an: dict) -> None:
    sens = an["sensitivity"]
    ratios = sens["ratios"]
    rows = []
    for r in sens["ranking"]:
        drops = {c["ratio"]: c["drop_points"] for c in sens["curves"][r["layer"]]}
        rows.append((r["rank"], r["layer"], human(sens["sizes"].get(r["layer"])), f"{r['mean_drop_points']:.2f}",
                     *[f"{drops[x]:.2f}" for x in ratios]))
    emit(f"baseline validation accuracy {100 * sens['baseline_accuracy']:.2f}%; "
         "accuracy drop (points) when each layer alone is pruned:")
    emit(table(rows, ["rank", "layer", "weights", "mean", *[f"@{100 * x:.0f}%" for x in ratios]]))
    if sens.get("interrupted"):
        emit("(interrupted: only the layers finished are shown)")
    pareto = an["pareto"]
    emit("\naccuracy vs size (global pruning" + (", fine-tuned" if pareto.get("fine_tuned") else "") + "); * = Pareto front")
    front = {p["ratio"] for p in pareto["front"]}
    emit(table([(f"{100 * p['ratio']:.0f}%", f"{100 * p['accuracy']:.2f}%", human(p["nonzero_params"]),
                 human(p.get("nonzero_macs")), "*" if p["ratio"] in front else "") for p in pareto["points"]],
               ["ratio", "val accuracy", "non-zero params", "non-zero MACs", "front"]))
