"""Human formatting of report numbers: 1.23M parameters, 45.6 KB, 0.42 ms, 97.5 %, and before/after changes."""
from __future__ import annotations

import math
from typing import Any, Optional

# How each known metric is shown: (label, kind, higher_is_better)
METRICS = {
    "accuracy": ("Accuracy", "percent", True),
    "recall_macro": ("Macro recall", "percent", True),
    "fpr_macro": ("Macro false-positive rate", "percent", False),
    "loss": ("Loss", "float", False),
    "params": ("Parameters", "count", False),
    "nonzero_params": ("Non-zero parameters", "count", False),
    "macs": ("MACs (dense)", "count", False),
    "nonzero_macs": ("Non-zero MACs", "count", False),
    "size_bytes": ("Size on disk (dense)", "bytes", False),
    "sparse_size_bytes": ("Size on disk (sparse format)", "bytes", False),
    "latency_ms": ("Latency (example batch)", "ms", False),
}


def metric_info(key: str) -> tuple:
    """``(label, kind, higher_is_better)`` for a results key; unknown keys are plain numbers."""
    if key in METRICS:
        return METRICS[key]
    if key.startswith("latency_ms_b") and key[len("latency_ms_b"):].isdigit():
        return (f"Latency, batch {key[len('latency_ms_b'):]}", "ms", False)
    return (key.replace("_", " ").capitalize(), "float", None)


def is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


def fmt_count(x: float) -> str:
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K")):
        if abs(x) >= div:
            return f"{x / div:.3g}{suffix}"
    return f"{x:.4g}" if isinstance(x, float) and not float(x).is_integer() else f"{int(x)}"


def fmt_bytes(x: float) -> str:
    for div, suffix in ((1e9, "GB"), (1e6, "MB"), (1e3, "KB")):
        if abs(x) >= div:
            return f"{x / div:.3g} {suffix}"
    return f"{int(x)} B"


def fmt_ms(x: float) -> str:
    if abs(x) < 1:
        return f"{x * 1000:.3g} µs"
    return f"{x:.3g} ms"


def fmt_value(x: Any, kind: str = "float") -> str:
    """Format one number by kind (``percent``, ``count``, ``bytes``, ``ms``, ``float``); None/NaN -> an em dash."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "—"
    if not is_number(x):
        return str(x)
    if kind == "percent":
        return f"{100 * x:.2f} %"
    if kind == "count":
        return fmt_count(x)
    if kind == "bytes":
        return fmt_bytes(x)
    if kind == "ms":
        return fmt_ms(x)
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.4g}"


def fmt_change(before: Any, after: Any, kind: str) -> str:
    """``+1.20 pp`` for percentages, ``-75.0 %`` relative change otherwise."""
    if not (is_number(before) and is_number(after)):
        return "—"
    if kind == "percent":
        return f"{100 * (after - before):+.2f} pp"
    if before == 0:
        return "—" if after == 0 else "new"
    return f"{100 * (after - before) / abs(before):+.1f} %"


def ratio(before: Any, after: Any) -> Optional[float]:
    """``after / before`` or None when undefined."""
    if not (is_number(before) and is_number(after)) or before == 0:
        return None
    return after / before


def fmt_ratio(r: Optional[float]) -> str:
    return "—" if r is None else f"{r:.3g}×"


def verdict(before: Any, after: Any, higher_is_better: Optional[bool], rel_tol: float = 1e-3) -> str:
    """``"better"``, ``"worse"`` or ``"same"`` (CSS class of the change cell)."""
    if higher_is_better is None or not (is_number(before) and is_number(after)):
        return "same"
    if abs(after - before) <= rel_tol * max(abs(before), abs(after), 1e-12):
        return "same"
    return "better" if (after > before) == higher_is_better else "worse"
