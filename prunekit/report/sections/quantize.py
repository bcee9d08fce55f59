"""Report section ``quantize``: the int8 model next to float32 — file size, deviation, agreement, accuracy, latency."""
from __future__ import annotations

from typing import Optional

from ..base import register_section
from ..format import fmt_bytes
from ..html import esc, numeric, section, table


def _pct(x) -> object:
    return numeric(f"{100 * x:.2f} %") if isinstance(x, (int, float)) else None


def _ms(x) -> object:
    return numeric(f"{x:.3f} ms") if isinstance(x, (int, float)) else None


def _bytes(x) -> object:
    return numeric(fmt_bytes(x)) if isinstance(x, int) else None


def quantize_rows(info: dict) -> list:
    """Two rows, float32 and int8, with the columns the stage measured (missing ones show as a dash)."""
    return [
        {"model": "float32", "bytes": _bytes(info.get("float32_bytes")), "test": _pct(info.get("float_test_accuracy")),
         "agree": None, "dev": None, "lat": _ms(info.get("float32_latency_ms_b1"))},
        {"model": f"int8 ({info.get('backend')}, {info.get('mode')})", "bytes": _bytes(info.get("bytes")),
         "test": _pct(info.get("test_accuracy")), "agree": _pct(info.get("top1_agreement")),
         "dev": numeric(f"{info['max_abs_diff']:.2e}") if isinstance(info.get("max_abs_diff"), float) else None,
         "lat": _ms(info.get("latency_ms_b1"))},
    ]


COLUMNS = [("model", "model"), ("bytes", "file size"), ("test", "test accuracy"),
           ("agree", "top-1 agreement vs float32 (val)"), ("dev", "max |int8 − float32| (val)"),
           ("lat", "latency, batch 1")]


@register_section("quantize", order=45, title="int8 quantization")
def quantize_section(results: dict, ctx: dict) -> Optional[str]:
    info = results.get("quantize")
    if not info:
        return None
    notes = []
    if isinstance(info.get("size_ratio"), float):
        notes.append(f"the int8 file is {100 * info['size_ratio']:.1f} % of the float32 one")
    if isinstance(info.get("speedup_b1"), float):
        notes.append(f"batch-1 latency ×{info['speedup_b1']:.2f} vs float32 eager (one thread)")
    cal = info.get("calibration")
    if cal:
        notes.append(f"activation ranges calibrated on {cal['samples']} {cal['split']}-split samples "
                     f"({cal['batches']} batches)")
    body = table(quantize_rows(info), COLUMNS)
    if info.get("path"):
        body += f"<p>Written to <code>{esc(info['path'])}</code>.</p>"
    return section("int8 quantization", body, subtitle="; ".join(notes))
