"""Report section ``latency``: a ``latency_target`` prune — target, predicted and measured latency, the measured
checks of the allocation, and per layer the chosen widths with their predicted and measured times."""
from __future__ import annotations

from typing import Optional

from ..base import register_section
from ..html import esc, numeric, section, table


def _ms(x) -> object:
    return numeric(f"{x:.3f} ms") if isinstance(x, (int, float)) else None


def _frac(x) -> object:
    return numeric(f"{100 * x:.1f} %") if isinstance(x, (int, float)) else None


def _widths(widths: dict) -> str:
    """``{"in": [64, 32], "out": [16, 8]}`` -> ``in 64→32, out 16→8`` (dense → kept per axis)."""
    return ", ".join(f"{axis} {w[0]}→{w[1]}" if w[0] != w[1] else f"{axis} {w[0]}" for axis, w in widths.items())


def layer_rows(info: dict) -> list:
    rows = []
    for name, row in (info.get("layers") or {}).items():
        pred, meas = row.get("predicted_ms"), row.get("measured_ms")
        rows.append({"layer": row.get("module", name), "widths": _widths(row.get("widths") or {}),
                     "dense": _ms(row.get("dense_ms")), "pred": _ms(pred), "meas": _ms(meas),
                     "err": numeric(f"{100 * (pred / meas - 1):+.1f} %")
                     if isinstance(pred, (int, float)) and isinstance(meas, (int, float)) and meas > 0 else None})
    return rows


def check_rows(info: dict) -> list:
    return [{"try": i + 1, "aim": _frac(c.get("aim")), "pred": _frac(c.get("predicted")),
             "meas": _frac(c.get("measured")),
             "se": numeric(f"±{100 * c['stderr']:.1f} %") if isinstance(c.get("stderr"), (int, float)) else None}
            for i, c in enumerate(info.get("checks") or [])]


LAYER_COLUMNS = [("layer", "layer"), ("widths", "channels (dense → kept)"), ("dense", "dense, predicted"),
                 ("pred", "pruned, predicted"), ("meas", "pruned, measured alone"), ("err", "prediction error")]
CHECK_COLUMNS = [("try", "allocation"), ("aim", "aimed at (predicted, of dense)"),
                 ("pred", "predicted"), ("meas", "measured (same rounds as dense)"), ("se", "standard error")]


@register_section("latency", order=41, title="Latency target")
def latency_section(results: dict, ctx: dict) -> Optional[str]:
    info = results.get("latency")
    if not info:
        return None
    notes = [f"target {info.get('target')!s} = {info.get('target_ms', float('nan')):.3f} ms of the dense "
             f"{info.get('dense_ms', float('nan')):.3f} ms",
             f"batch {info.get('batch')}, {info.get('threads')} thread(s), {info.get('backend')}"]
    body = []
    pred, dense = info.get("predicted_ms"), info.get("dense_ms")
    summary = [{"what": "predicted by the latency table", "ms": _ms(pred),
                "frac": _frac(pred / dense) if isinstance(pred, (int, float)) and dense else None},
               {"what": "measured (pruned vs dense, same rounds)", "ms": _ms(info.get("measured_ms")),
                "frac": _frac(info.get("measured_fraction"))}]
    body.append(table(summary, [("what", ""), ("ms", "pruned model"), ("frac", "of dense")]))
    if isinstance(info.get("error"), (int, float)):
        body.append(f"<p>Prediction error {100 * info['error']:+.1f} % (predicted fraction / measured fraction − 1)."
                    "</p>")
    if info.get("checks"):
        body.append("<h3>Allocation checked on the pruned model</h3>" + table(check_rows(info), CHECK_COLUMNS))
    rows = layer_rows(info)
    if rows:
        body.append("<h3>Per layer</h3>" + table(rows, LAYER_COLUMNS))
    if info.get("cache_file"):
        body.append(f"<p>Latency table: <code>{esc(info['cache_file'])}</code>.</p>")
    return section("Latency target", "".join(body), subtitle="; ".join(notes))
