"""Report sections for the reduce stage: comparison table, PCA explained-variance curve, penultimate-feature maps."""
from __future__ import annotations

from typing import Optional

import numpy as np

from ..base import register_section
from ..html import esc, image, section, table
from ..plots import PALETTE, figure_to_data_uri, new_figure

COLUMNS = (("variant", "variant"), ("in_features", "inputs"), ("accuracy", "test accuracy"), ("params", "params"),
           ("nonzero_params", "non-zero params"), ("macs", "MACs"), ("nonzero_macs", "non-zero MACs"),
           ("e2e_macs", "end-to-end MACs"), ("latency_ms_b1", "latency b1 (ms)"), ("latency_ms_b64", "latency b64 (ms)"),
           ("note", "note"))


def comparison_table(rows: list) -> str:
    """HTML table of the comparison rows; end-to-end MACs (a linear reducer's projection included) get a column."""
    flat = []
    for row in rows:
        note = row.get("error") or ("chosen" if row.get("chosen") else "")
        flat.append({**row, "e2e_macs": row.get("end_to_end", {}).get("macs", row.get("macs")), "note": note})
    return table(flat, COLUMNS)


def variance_plot(curve: list, chosen: int) -> str:
    fig, ax = new_figure(6.5, 3.2)
    ks = np.arange(1, len(curve) + 1)
    ax.plot(ks, curve, color=PALETTE[0])
    if 1 <= chosen <= len(curve):
        ax.axvline(chosen, color=PALETTE[1], linestyle="--")
        ax.annotate(f"k={chosen}: {curve[chosen - 1]:.1%}", (chosen, curve[chosen - 1]), xytext=(6, -14),
                    textcoords="offset points", color=PALETTE[1])
    ax.set_xscale("log")
    ax.set_xlabel("principal components (training inputs)")
    ax.set_ylabel("cumulative explained variance")
    ax.set_ylim(0, 1.02)
    return figure_to_data_uri(fig)


def feature_maps(pictures: dict) -> Optional[str]:
    """One row per model (original, pruned), one column per embedding (PCA, t-SNE), points coloured by class."""
    models = pictures.get("models") or {}
    if not models:
        return None
    methods = list(next(iter(models.values())).keys())
    labels = np.asarray(pictures["labels"])
    fig, axes = new_figure(4.0 * len(methods), 3.6 * len(models), nrows=len(models), ncols=len(methods), squeeze=False)
    for i, (name, embeds) in enumerate(models.items()):
        for j, method in enumerate(methods):
            ax = axes[i][j]
            z = np.asarray(embeds[method])
            cmap = "tab10" if labels.max(initial=0) < 10 else "tab20"
            ax.scatter(z[:, 0], z[:, 1], c=labels % 20, cmap=cmap, vmin=0, vmax=(9 if cmap == "tab10" else 19), s=6,
                       alpha=0.8, linewidths=0)
            ax.set_title(f"{name} model — {method.upper()}", fontsize=10)
            ax.set_xticks([])
            ax.set_yticks([])
    classes = sorted(set(labels.tolist()))
    if len(classes) <= 20:
        import matplotlib  # already loaded by new_figure
        from matplotlib.lines import Line2D

        cmap = matplotlib.colormaps["tab10" if len(classes) <= 10 else "tab20"]
        handles = [Line2D([], [], marker="o", linestyle="", color=cmap(c % cmap.N), label=str(c)) for c in classes]
        fig.legend(handles=handles, title="class", loc="center right", bbox_to_anchor=(1.06, 0.5))
    return figure_to_data_uri(fig)


@register_section("reduce", order=35, title="Dimensionality reduction")
def reduce_section(results: dict, ctx: dict) -> Optional[str]:
    info = results.get("reduce")
    if not info:
        return None
    parts = [f"<p>{esc(info['method'])} from {info['in_features_raw']} to {info['n_components']} input features, "
             f"fitted on the {info['fitted_on']['n_samples']} training samples only (validation and test data use its "
             "out-of-sample transform). MACs of reduced models exclude the reducer; the end-to-end column includes a "
             "linear reducer's projection.</p>"]
    if info.get("rows"):
        parts.append(comparison_table(info["rows"]))
    final = info.get("final") or {}
    if "folded" in final:
        parts.append(f"<p>Folded into the first layer (one module on raw inputs): {final['folded'].get('macs', 0):,} MACs, "
                     f"max |folded - reducer→model| = {final['fold_max_abs_diff']:.2e}.</p>")
    if info.get("explained_variance"):
        parts.append(image(variance_plot(info["explained_variance"], info["n_components"]), "PCA explained variance"))
    pictures = feature_maps(info.get("pictures") or {})
    if pictures:
        parts.append("<p>Penultimate-layer features of the test set in 2-D, coloured by class.</p>")
        parts.append(image(pictures, "penultimate features in 2-D"))
    return section("Dimensionality reduction", "".join(parts))
