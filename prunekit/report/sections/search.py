"""Report sections ``search`` (every budget-search probe) and ``analysis`` (sensitivity, histograms, ranking, Pareto)."""
from __future__ import annotations

import math
from typing import Optional

import numpy as np

from ..base import register_section
from ..html import badge, image, numeric, section, table
from ..plots import AFTER, BEFORE, PALETTE, figure_to_data_uri, new_figure


def _pct(x):
    return numeric(f"{100 * x:.2f} %") if isinstance(x, (int, float)) else None


def probes_plot(search: dict) -> str:
    probes = [p for p in search["probes"] if isinstance(p.get("ratio"), (int, float))]
    base = search["baseline"]["val_accuracy"]
    fig, ax = new_figure(9.0, 3.4)
    for ok, color, label in ((True, PALETTE[2], "within budget"), (False, PALETTE[6], "over budget")):
        pts = [p for p in probes if bool(p["ok"]) == ok]
        acc_key = "accuracy" if pts and "accuracy" in pts[0] else "val_accuracy"
        ax.scatter([100 * p["ratio"] for p in pts], [100 * p[acc_key] for p in pts], color=color, s=36, zorder=3, label=label)
        for p in pts:
            ax.annotate(str(p.get("index", "")), (100 * p["ratio"], 100 * p[acc_key]), fontsize=7, xytext=(3, 3),
                        textcoords="offset points", color="#4a5263")
    ax.axhline(100 * base, color=BEFORE, ls="--", lw=1.2, label=f"unpruned ({100 * base:.2f} %)")
    ax.axhline(100 * base - search["max_accuracy_drop"], color=PALETTE[6], ls=":", lw=1.2,
               label=f"budget (-{search['max_accuracy_drop']} pt)")
    if search.get("best"):
        ax.axvline(100 * search["ratio"], color=AFTER, lw=1.0, alpha=0.6, label=f"chosen {100 * search['ratio']:.1f} %")
    ax.set_xlabel("pruning ratio (%)")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=5, fontsize=8.5)
    return image(figure_to_data_uri(fig), "search probes")


@register_section("search", order=43, title="Budget search")
def search_section(results: dict, ctx: dict) -> Optional[str]:
    """Every probe of the ``search:`` stage (order, ratio, accuracy, drop, verdict, size) and the choice made."""
    search = results.get("search")
    if not isinstance(search, dict) or not search.get("probes"):
        return None
    rows = []
    for p in search["probes"]:
        rows.append({"i": p.get("index"), "ratio": _pct(p.get("ratio")),
                     "acc": _pct(p.get("accuracy", p.get("val_accuracy"))),
                     "drop": numeric(f"{p['drop_points']:.2f}") if "drop_points" in p else None,
                     "ok": badge("within budget", "better") if p.get("ok") else badge("over budget", "worse"),
                     "nz": p.get("nonzero_params"), "macs": p.get("nonzero_macs"), "lat": p.get("latency_ms")})
    cols = [("i", "probe"), ("ratio", "ratio"), ("acc", "val accuracy"), ("drop", "drop (points)"), ("ok", "budget"),
            ("nz", "non-zero params"), ("macs", "non-zero MACs"), ("lat", "latency (ms)")]
    body = probes_plot(search) + table(rows, cols)
    if search.get("layer_ratios"):
        body += table([{"layer": k, "ratio": _pct(v)} for k, v in search["layer_ratios"].items()],
                      [("layer", "layer"), ("ratio", "chosen ratio")])
    sub = (f"{search.get('method', 'bisection')} search ({search.get('granularity', 'weight')}), objective "
           f"{search.get('objective')}, budget {search['max_accuracy_drop']} validation-accuracy points. {search.get('message', '')}")
    return section("Budget search", body, subtitle=sub)


def sensitivity_plot(sens: dict, max_lines: int = 12) -> str:
    fig, ax = new_figure(9.0, 3.6)
    ranked = [r["layer"] for r in sens["ranking"]]
    shown = ranked[:max_lines]
    for i, layer in enumerate(shown):
        curve = sens["curves"][layer]
        ax.plot([100 * c["ratio"] for c in curve], [100 * c["accuracy"] for c in curve], marker="o", ms=3,
                color=PALETTE[i % len(PALETTE)], ls="-" if i < len(PALETTE) else "--", label=layer)
    ax.axhline(100 * sens["baseline_accuracy"], color=BEFORE, ls="--", lw=1.2, label="unpruned")
    ax.set_xlabel("ratio of this layer pruned (%)")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=7.5)
    return image(figure_to_data_uri(fig), "per-layer sensitivity")


def histograms_plot(hists: dict, max_layers: int = 16) -> str:
    names = list(hists)[:max_layers]
    cols = min(4, len(names))
    rows = math.ceil(len(names) / cols)
    fig, axes = new_figure(9.0, 2.1 * rows, nrows=rows, ncols=cols, squeeze=False)
    fig.subplots_adjust(hspace=0.55, wspace=0.3)
    for ax in axes.flat[len(names):]:
        ax.set_visible(False)
    for ax, name in zip(axes.flat, names):
        h = hists[name]
        edges = np.asarray(h["edges"])
        ax.bar(edges[:-1], h["counts"], width=np.diff(edges), align="edge", color=AFTER, alpha=0.8)
        ax.set_title(f"{name} (n={h['numel']})", fontsize=8)
        ax.tick_params(labelsize=7)
    return image(figure_to_data_uri(fig), "per-layer weight histograms")


def pareto_plot(pareto: dict) -> str:
    key = pareto.get("size_key", "nonzero_params")
    pts = pareto["points"]
    front = pareto["front"]
    fig, ax = new_figure(9.0, 3.4)
    ax.scatter([p[key] for p in pts], [100 * p["accuracy"] for p in pts], color=BEFORE, s=30, label="global ratios")
    ax.plot([p[key] for p in front], [100 * p["accuracy"] for p in front], color=AFTER, marker="o", label="Pareto front")
    for p in pts:
        ax.annotate(f"{100 * p['ratio']:.0f}%", (p[key], 100 * p["accuracy"]), fontsize=7, xytext=(3, 3),
                    textcoords="offset points", color="#4a5263")
    ax.set_xscale("log")
    ax.set_xlabel(key.replace("_", " ") + " (log scale)")
    ax.set_ylabel("validation accuracy (%)")
    ax.legend(loc="lower right", fontsize=8.5)
    return image(figure_to_data_uri(fig), "accuracy vs size")


@register_section("analysis", order=44, title="Layer analysis")
def analysis_section(results: dict, ctx: dict) -> Optional[str]:
    """Per-layer accuracy-vs-ratio curves, layer-importance ranking, weight histograms and the accuracy-vs-size Pareto plot."""
    an = results.get("analysis")
    if not isinstance(an, dict) or not an.get("sensitivity", {}).get("curves"):
        return None
    sens = an["sensitivity"]
    ratios = sens["ratios"]
    rows = []
    for r in sens["ranking"]:
        row = {"rank": r["rank"], "layer": r["layer"], "size": sens["sizes"].get(r["layer"]),
               "mean": numeric(f"{r['mean_drop_points']:.2f}")}
        for c in sens["curves"][r["layer"]]:
            row[f"r{c['ratio']}"] = numeric(f"{c['drop_points']:.2f}")
        rows.append(row)
    cols = [("rank", "rank"), ("layer", "layer"), ("size", "weights"), ("mean", "mean drop (pt)")] + \
        [(f"r{r}", f"drop @ {100 * r:.0f}%") for r in ratios]
    parts = ["<h3>Accuracy vs ratio, each layer pruned alone</h3>", sensitivity_plot(sens),
             "<h3>Layer importance (most sensitive first)</h3>", table(rows, cols)]
    if an.get("histograms"):
        parts += ["<h3>Weight distributions</h3>", histograms_plot(an["histograms"])]
    if an.get("pareto", {}).get("points"):
        tuned = "after fine-tuning" if an["pareto"].get("fine_tuned") else "without fine-tuning"
        parts += [f"<h3>Accuracy vs size (global {an.get('granularity')} pruning, {tuned})</h3>", pareto_plot(an["pareto"])]
    sub = (f"{an.get('granularity')} pruning by {an.get('criterion')}; baseline validation accuracy "
           f"{100 * sens['baseline_accuracy']:.2f} %; drops in percentage points.")
    return section("Layer analysis", "".join(parts), subtitle=sub)
