"""Matplotlib figures in the report's style, embedded as base64 PNG data URIs.

matplotlib is imported when a figure is drawn, never at import time, and figures are plain
``matplotlib.figure.Figure`` objects rendered by the Agg canvas: no global backend switch, no window.
"""
from __future__ import annotations

import base64
import io
import sys
from typing import TYPE_CHECKING, Tuple

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

DPI = 120  # crisp on normal screens, a few tens of KB per plot
PALETTE = ("#3b6fd8", "#e07a2f", "#2a9d6f", "#b2459c", "#c9a227", "#5b6b8c", "#d0453c", "#17a2b8")
BEFORE, AFTER = "#9aa6bd", "#3b6fd8"  # colours of the unpruned / pruned model in every plot

STYLE = {
    "axes.spines.top": False,
    "axes.spines.right": False,
    "axes.edgecolor": "#9aa3b5",
    "axes.labelcolor": "#1d2433",
    "axes.grid": True,
    "grid.color": "#e6e9f0",
    "grid.linewidth": 0.8,
    "axes.axisbelow": True,
    "xtick.color": "#4a5263",
    "ytick.color": "#4a5263",
    "font.size": 10,
    "legend.frameon": False,
}


def style() -> dict:
    """The report's rcParams (imports matplotlib: call only when drawing)."""
    import matplotlib

    return {**STYLE, "axes.prop_cycle": matplotlib.cycler(color=PALETTE)}


def new_figure(width: float = 9.0, height: float = 3.6, **subplots_kw) -> Tuple["Figure", object]:
    """``(fig, axes)`` in the report's style (sizes in inches; the page shows them ~1000 px wide)."""
    import matplotlib
    from matplotlib.figure import Figure

    with matplotlib.rc_context(style()):
        fig = Figure(figsize=(width, height), dpi=DPI)
        axes = fig.subplots(**subplots_kw)
    return fig, axes


def figure_to_data_uri(fig: "Figure", *, dpi: int | None = None) -> str:
    """Render ``fig`` to PNG and return ``data:image/png;base64,...``; the figure is closed afterwards."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi or DPI, bbox_inches="tight", facecolor="white")  # png -> Agg canvas
    pyplot = sys.modules.get("matplotlib.pyplot")
    if pyplot is not None:  # a pyplot-managed figure (the caller made it with plt): free it; Figure() needs nothing
        pyplot.close(fig)
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")
