"""Report section ``schedule``: per-round table and accuracy / sparsity curves of an iterative or AGP run."""
from __future__ import annotations

from typing import Optional

from ..base import register_section
from ..html import badge, image, numeric, section, table
from ..plots import AFTER, BEFORE, PALETTE, figure_to_data_uri, new_figure


def verdict_badge(ok) -> object:
    return badge("within budget", "better") if ok else badge("over budget", "worse")


def pct(x) -> object:
    return numeric(f"{100 * x:.2f} %") if isinstance(x, (int, float)) else None


def schedule_rows(steps: list) -> list:
    rows = []
    for s in steps:
        rows.append({"round": s.get("round"), "sparsity": pct(s.get("target_sparsity")),
                     "step": pct(s.get("step_ratio")), "acc": pct(s.get("val_accuracy")),
                     "drop": numeric(f"{s['drop_points']:.2f}") if "drop_points" in s else None,
                     "verdict": verdict_badge(s.get("within_budget", True)), "nz": s.get("nonzero_params"),
                     "macs": s.get("nonzero_macs"), "lat": s.get("latency_ms")})
    return rows


COLUMNS = [("round", "round / epoch"), ("sparsity", "sparsity"), ("step", "ratio this round"), ("acc", "val accuracy"),
           ("drop", "drop (points)"), ("verdict", "budget"), ("nz", "non-zero params"), ("macs", "non-zero MACs"),
           ("lat", "latency (ms)")]


def schedule_plot(sched: dict) -> str:
    steps = [s for s in sched["steps"] if not s.get("final")] or sched["steps"]
    base = sched.get("baseline", {}).get("val_accuracy")
    fig, ax = new_figure(9.0, 3.4)
    x = [s["round"] for s in steps]
    ax.plot(x, [100 * s["val_accuracy"] for s in steps], marker="o", color=AFTER, label="validation accuracy")
    bad = [s for s in steps if not s.get("within_budget", True)]
    if bad:
        ax.scatter([s["round"] for s in bad], [100 * s["val_accuracy"] for s in bad], color=PALETTE[6], zorder=3,
                   s=50, label="over budget")
    if base is not None:
        ax.axhline(100 * base, color=BEFORE, ls="--", lw=1.2, label=f"unpruned ({100 * base:.2f} %)")
        if sched.get("max_accuracy_drop") is not None:
            ax.axhline(100 * base - sched["max_accuracy_drop"], color=PALETTE[6], ls=":", lw=1.2, label="budget")
    ax.set_xlabel("epoch" if sched.get("kind") == "agp" else "round")
    ax.set_ylabel("validation accuracy (%)")
    ax2 = ax.twinx()
    ax2.plot(x, [100 * s["target_sparsity"] for s in steps], color=PALETTE[1], ls="-.", marker="s", ms=3,
             label="sparsity")
    ax2.set_ylabel("sparsity (%)")
    ax2.grid(False)
    h1, l1 = ax.get_legend_handles_labels()
    h2, l2 = ax2.get_legend_handles_labels()
    ax.legend(h1 + h2, l1 + l2, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=5, fontsize=8.5)
    return image(figure_to_data_uri(fig), "accuracy and sparsity per round")


@register_section("schedule", order=42, title="Pruning schedule")
def schedule_section(results: dict, ctx: dict) -> Optional[str]:
    """Every round of the ``schedule:`` stage: ratio, validation accuracy, budget verdict, size; rollback said plainly."""
    sched = results.get("schedule")
    if not isinstance(sched, dict) or not sched.get("steps"):
        return None
    note = ""
    if sched.get("rolled_back") or sched.get("interrupted"):
        note = f'<p class="warn">{badge("rolled back" if sched.get("rolled_back") else "interrupted", "worse")} ' \
               f'{sched.get("message", "")}</p>'
    body = note + schedule_plot(sched) + table(schedule_rows(sched["steps"]), COLUMNS)
    sub = f"{sched.get('kind')} {sched.get('granularity')} pruning to {100 * sched.get('target', 0):.1f} %" + \
        (f" along a {sched['path']} path" if sched.get("path") else "") + f". {sched.get('message', '')}"
    return section("Pruning schedule", body, subtitle=sub)
