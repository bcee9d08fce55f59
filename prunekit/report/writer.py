"""write_report(): results (+ optional models) -> one self-contained report.html."""
from __future__ import annotations

import datetime as _dt
from pathlib import Path
from typing import List, Optional

from .base import anchor_of, render_sections
from .html import page
from .results import to_jsonable

REPORT_FILE = "report.html"


def write_report(
    out_dir: str | Path,
    results: dict,
    *,
    models: Optional[dict] = None,
    title: str = "prunekit report",
    sections: Optional[List[str]] = None,
) -> Path:
    """Write ``out_dir/report.html`` and return its path.

    ``results`` is the dict that goes to results.json (``before``/``after`` metrics,
    ``layers``, ``history``, ``stages``, ``recipe``...); ``models`` may hold live modules
    (``{"before": m0, "after": m1}``) for the sections that plot weights. ``sections``
    restricts the page to these registered section names (default: all, in order).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    ctx = {"models": dict(models or {}), "out_dir": out}
    rendered = render_sections(results, ctx, sections)
    nav = [(anchor_of(name), t) for name, t, _ in rendered]
    html = page(title, _subtitle(results), [h for _, _, h in rendered], nav)
    from ..io.atomic import atomic_write_text

    return atomic_write_text(out / REPORT_FILE, html, what="report")


def _subtitle(results: dict) -> str:
    parts = []
    model = results.get("model")
    if isinstance(model, dict):
        model = model.get("name") or model.get("spec")
    if model:
        parts.append(f"model: {to_jsonable(model)}")
    data = results.get("data")
    if isinstance(data, dict):
        data = data.get("name")
    if data:
        parts.append(f"data: {to_jsonable(data)}")
    parts.append("generated " + _dt.datetime.now().strftime("%Y-%m-%d %H:%M"))
    return " · ".join(parts)
