"""Built-in table sections: before/after summary with headline cards, pipeline stages, the recipe."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, List

from ..base import register_section
from ..format import fmt_change, fmt_ratio, fmt_value, is_number, metric_info, ratio, verdict
from ..html import badge, esc, key_values, numeric, pre, section, table
from ..results import to_jsonable

# Summary rows in this order (then any other numeric key both sides share, then the rest of the latencies)
SUMMARY_KEYS = (
    "accuracy", "recall_macro", "fpr_macro", "loss",
    "params", "nonzero_params", "macs", "nonzero_macs",
    "size_bytes", "sparse_size_bytes", "latency_ms", "latency_ms_b1", "latency_ms_b64",
)


def summary_keys(before: dict, after: dict) -> List[str]:
    """Known metrics first (in SUMMARY_KEYS order), then other latencies, then other shared numbers."""
    shared = [k for k in before if k in after and (is_number(before[k]) or is_number(after[k]))]
    known = [k for k in SUMMARY_KEYS if k in shared]
    lat = sorted((k for k in shared if k.startswith("latency_ms_b") and k not in known), key=lambda k: int(k[12:] or 0) if k[12:].isdigit() else 0)
    rest = [k for k in shared if k not in known and k not in lat and "iqr" not in k]
    return known + lat + rest


@register_section("summary", order=10, title="Summary")
def summary_section(results: dict, ctx: dict) -> str | None:
    """Before/after/change/ratio table of every metric both sides report, with headline cards on top."""
    before, after = results.get("before"), results.get("after")
    if not isinstance(before, dict) or not isinstance(after, dict):
        return None
    keys = summary_keys(before, after)
    if not keys:
        return None
    rows = []
    for k in keys:
        label, kind, higher_better = metric_info(k)
        b, a = before[k], after[k]
        rows.append({
            "metric": label,
            "before": _with_spread(before, k, kind),
            "after": _with_spread(after, k, kind),
            "change": numeric(badge(fmt_change(b, a, kind), verdict(b, a, higher_better)), is_html=True),
            "ratio": numeric(fmt_ratio(ratio(b, a))),
        })
    cols = [("metric", "Metric"), ("before", "Before"), ("after", "After"), ("change", "Change"), ("ratio", "After / before")]
    body = headline_cards(before, after) + table(rows, cols)
    sub = "The model before pruning and the final model, measured the same way."
    if any("iqr" in k for k in before):
        sub += " Latency: median ± half the interquartile range of the timed runs."
    return section("Summary", body, subtitle=sub)


def _with_spread(side: dict, key: str, kind: str):
    """The value, plus the interquartile range of latency measurements when measure() reported it."""
    iqr = side.get(key.replace("latency_ms", "latency_iqr_ms")) if key.startswith("latency_ms") else None
    text = esc(fmt_value(side[key], kind))
    if is_number(iqr):
        text += f' <span class="spread">± {esc(fmt_value(iqr / 2, kind))}</span>'
    return numeric(text, is_html=True)


# (key candidates, card label, word for "smaller is better" ratios)
CARDS = (
    (("accuracy",), "Accuracy", None),
    (("nonzero_params", "params"), "Non-zero parameters", "fewer"),
    (("nonzero_macs", "macs"), "Non-zero MACs", "fewer"),
    (("sparse_size_bytes", "size_bytes"), "Size on disk", "smaller"),
    (("latency_ms_b1", "latency_ms"), "Latency", "faster"),
)


def headline_cards(before: dict, after: dict) -> str:
    cards = []
    for keys, label, word in CARDS:
        key = next((k for k in keys if is_number(before.get(k)) and is_number(after.get(k))), None)
        if key is None:
            continue
        _, kind, higher_better = metric_info(key)
        b, a = before[key], after[key]
        if word is None:
            detail = badge(fmt_change(b, a, kind), verdict(b, a, higher_better)) + f" from {esc(fmt_value(b, kind))}"
        else:
            detail = _reduction(b, a, word, verdict(b, a, higher_better)) + f" was {esc(fmt_value(b, kind))}"
        if key.startswith("latency_ms_b"):
            label = f"Latency, batch {key[12:]}"
        cards.append(
            f'<div class="card"><div class="label">{esc(label)}</div>'
            f'<div class="value">{esc(fmt_value(a, kind))}</div><div class="detail">{detail}</div></div>'
        )
    return f'<div class="cards">{"".join(cards)}</div>' if cards else ""


def _reduction(before: float, after: float, word: str, kind: str) -> str:
    r = ratio(before, after)
    if r is None or r <= 0:
        return badge("—", "same")
    if kind == "same":
        return badge("unchanged", "same")
    return badge(f"{1 / r:.3g}× {word}", kind) if r < 1 else badge(f"{r:.3g}× {'slower' if word == 'faster' else 'more'}", kind)


@register_section("stages", order=50, title="Stages")
def stages_section(results: dict, ctx: dict) -> str | None:
    """One row per pipeline stage (``results["stages"]``): its name and every value it reported."""
    stages = results.get("stages")
    if not isinstance(stages, list) or not stages:
        return None
    rows = []
    for i, row in enumerate(r for r in stages if isinstance(r, dict)):
        name = row.get("stage", f"#{i + 1}")
        details = [(k.replace("_", " "), _stage_value(k, v)) for k, v in row.items() if k != "stage" and v is not None]
        rows.append({"n": i + 1, "stage": name, "details": key_values(details)})
    return section("Stages", table(rows, [("n", "#"), ("stage", "Stage"), ("details", "What it did")]),
                   subtitle="Each step of the recipe, in the order it ran.")


def _stage_value(key: str, value: Any) -> str:
    if is_number(value):
        _, kind, _ = metric_info(key)
        if kind == "float" and any(w in key for w in ("accuracy", "sparsity", "recall")) and 0 <= value <= 1:
            kind = "percent"
        return fmt_value(value, kind)
    if isinstance(value, str) and ("/" in value or "\\" in value):
        return Path(value).name  # paths: the file name is what a reader needs (files sit next to the report)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(to_jsonable(value), separators=(", ", ": "))
    return str(value)


@register_section("recipe", order=60, title="Recipe")
def recipe_section(results: dict, ctx: dict) -> str | None:
    """The recipe that produced these results, as YAML you can run again."""
    recipe = results.get("recipe")
    if not recipe:
        return None
    import yaml

    text = yaml.safe_dump(to_jsonable(recipe), sort_keys=False, default_flow_style=False, allow_unicode=True)
    return section("Recipe", pre(text), subtitle="Re-run it with: prunekit run recipe.yaml")



@register_section("files", order=55, title="Files")
def files_section(results: dict, ctx: dict) -> str | None:
    """The files the run wrote (``results["artifacts"]``, sizes from ``results["disk_bytes"]``) and stage timings."""
    artifacts = results.get("artifacts") if isinstance(results.get("artifacts"), dict) else {}
    sizes = results.get("disk_bytes") if isinstance(results.get("disk_bytes"), dict) else {}
    timings = results.get("timings_s") if isinstance(results.get("timings_s"), dict) else {}
    if not artifacts and not timings:
        return None
    body = ""
    if artifacts:
        rows = [{"what": name, "file": Path(str(path)).name,
                 "size": numeric(fmt_value(sizes.get(name), "bytes")) if is_number(sizes.get(name)) else None}
                for name, path in artifacts.items()]
        body += table(rows, [("what", "Artifact"), ("file", "File (next to this report)"), ("size", "Size")])
    if timings:
        rows = [{"step": k.replace("_", " "), "seconds": numeric(f"{v:.2f} s") if is_number(v) else v} for k, v in timings.items()]
        body += "<details><summary>Time spent per step</summary>" + table(rows, [("step", "Step"), ("seconds", "Wall time")]) + "</details>"
    return section("Files", body, subtitle="What this run wrote to its output folder.")
