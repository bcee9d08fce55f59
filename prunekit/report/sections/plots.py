"""Built-in plot sections: per-layer sparsity bars, weight histograms before/after, accuracy per fine-tune epoch."""
from __future__ import annotations

from typing import List, Optional

import numpy as np
import torch
from torch import nn

from ...measure.counts import weight_tensors, weighted_leaves
from ..base import register_section
from ..format import fmt_count, is_number
from ..html import image, numeric, section, table
from ..plots import AFTER, BEFORE, PALETTE, figure_to_data_uri, new_figure

MAX_BAR_LAYERS = 120  # beyond this the bar chart keeps the most pruned layers (the table lists all)


def weight_layers(model: nn.Module) -> dict:
    """``{name: (shape, flat effective weights)}`` of leaf layers with matrix / kernel weights (dim >= 2; skips norms).

    ``shape`` is that of the layer's first such weight; the values cover all of them (LSTM: ih and hh).
    """
    out = {}
    for name, module in weighted_leaves(model):
        mats = [w for _, w in weight_tensors(module) if w.dim() >= 2]
        if mats:
            out[name] = (list(mats[0].shape), torch.cat([w.detach().float().cpu().flatten() for w in mats]))
    return out


def layer_rows(results: dict, models: dict) -> List[dict]:
    """Rows ``name, type, shape, params, nonzero, sparsity, zeroed, removed`` for the sparsity chart.

    Computed from ``models["after"]`` (and ``models["before"]``) when given, else taken from
    ``results["layers"]`` (dicts with ``name`` and ``sparsity``; norm layers are left out).
    ``zeroed`` is the fraction of the original weights that are zero in the pruned model,
    ``removed`` the fraction physically cut out by structured pruning (needs ``models["before"]``).
    """
    after = models.get("after")
    if isinstance(after, nn.Module):
        before = models.get("before")
        return _rows_from_models(after, before if isinstance(before, nn.Module) else None)
    rows = []
    for r in results.get("layers") or []:
        if not isinstance(r, dict) or not is_number(r.get("sparsity")) or _is_norm(r):
            continue
        removed = float(r["removed"]) if is_number(r.get("removed")) else 0.0
        params = r.get("params", r.get("numel"))
        rows.append({**r, "params": params, "zeroed": float(r["sparsity"]) * (1 - removed), "removed": removed})
    return rows


def _is_norm(row: dict) -> bool:
    shape = row.get("shape")
    return (isinstance(shape, (list, tuple)) and len(shape) < 2) or "Norm" in str(row.get("type", ""))


def _rows_from_models(after: nn.Module, before: Optional[nn.Module]) -> List[dict]:
    original = weight_layers(before) if before is not None else {}
    types = {n: type(m).__name__ for n, m in after.named_modules()}
    rows = []
    for name, (shape, w) in weight_layers(after).items():
        numel0 = original[name][1].numel() if name in original else w.numel()
        nnz = int(torch.count_nonzero(w))
        rows.append({
            "name": name, "type": types.get(name, ""), "shape": shape,
            "params": w.numel(), "nonzero": nnz, "sparsity": 1 - nnz / max(w.numel(), 1),
            "removed": max(0.0, 1 - w.numel() / max(numel0, 1)), "zeroed": (w.numel() - nnz) / max(numel0, 1),
        })
    return rows


@register_section("layers", order=20, title="Per-layer sparsity")
def layers_section(results: dict, ctx: dict) -> str | None:
    """Horizontal bars: share of each layer's weights that are zero (masked) or removed (structured)."""
    rows = layer_rows(results, ctx.get("models", {}))
    if not rows:
        return None
    shown = rows if len(rows) <= MAX_BAR_LAYERS else sorted(rows, key=lambda r: -(r["zeroed"] + r["removed"]))[:MAX_BAR_LAYERS]
    img = image(figure_to_data_uri(_layer_bars(shown)), "per-layer sparsity bar chart")
    cols = [("name", "Layer"), ("type", "Type"), ("shape", "Weight shape"), ("params", "Parameters"),
            ("nonzero", "Non-zero"), ("sparsity", "Sparsity"), ("removed", "Removed"), ("macs", "MACs"),
            ("nonzero_macs", "Non-zero MACs")]
    cols = [c for c in cols if any(r.get(c[0]) is not None for r in rows)]
    listed = [{**r, "sparsity": numeric(f"{100 * r['sparsity']:.1f} %"), "removed": numeric(f"{100 * r['removed']:.1f} %"),
               **{k: _count(r.get(k)) for k in ("params", "nonzero", "macs", "nonzero_macs")}} for r in rows]
    details = f"<details><summary>Table of all {len(rows)} layers</summary>{table(listed, cols)}</details>"
    return section("Per-layer sparsity", img + details, subtitle=_overall(rows))


def _count(x):
    return numeric(fmt_count(x)) if is_number(x) else x


def _overall(rows: List[dict]) -> str:
    if all(is_number(r.get("params")) for r in rows):
        total = sum(r["params"] / max(1 - r["removed"], 1e-12) for r in rows)
        gone = sum(r["params"] / max(1 - r["removed"], 1e-12) * (r["zeroed"] + r["removed"]) for r in rows)
        return f"{100 * gone / max(total, 1):.1f} % of the weights of these {len(rows)} layers are zero or removed."
    return f"Sparsity of the weights of {len(rows)} layers (convolution, linear, embedding...)."


def _layer_bars(rows: List[dict]):
    n = len(rows)
    fig, ax = new_figure(9.0, min(0.26 * n + 1.0, 30.0))
    y = np.arange(n)
    zeroed = np.array([r["zeroed"] for r in rows]) * 100
    removed = np.array([r["removed"] for r in rows]) * 100
    ax.barh(y, zeroed, color=AFTER, height=0.7, label="zero (masked)")
    if removed.any():
        ax.barh(y, removed, left=zeroed, color=PALETTE[1], height=0.7, label="removed (structured)")
        ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=2, fontsize=9)
    for yi, total in zip(y, zeroed + removed):
        ax.text(min(total, 100) + 1, yi, f"{total:.0f}%", va="center", fontsize=8, color="#4a5263")
    ax.set_yticks(y, [r["name"] for r in rows], fontsize=8 if n > 20 else 9)
    ax.invert_yaxis()
    ax.set_xlim(0, 108)
    ax.set_xlabel("weights pruned (%)")
    ax.grid(axis="y", visible=False)
    return fig


@register_section("weights", order=30, title="Weight histograms")
def weights_section(results: dict, ctx: dict) -> str | None:
    """Distribution of weight values before pruning vs. the non-zero weights after (log-scale counts)."""
    models = ctx.get("models", {})
    before = weight_layers(models["before"]) if isinstance(models.get("before"), nn.Module) else {}
    after = weight_layers(models["after"]) if isinstance(models.get("after"), nn.Module) else {}
    if not before and not after:
        return None
    b = torch.cat([w for _, w in before.values()]).numpy() if before else None
    a = torch.cat([w for _, w in after.values()]).numpy() if after else None
    a_nz = a[a != 0] if a is not None else None
    fig, ax = new_figure(9.0, 3.4)
    ref = b if b is not None and b.size else a
    lo, hi = float(np.min(ref)), float(np.max(ref))
    bins = np.linspace(lo, hi if hi > lo else lo + 1e-6, 101)
    if b is not None:
        ax.hist(b, bins=bins, color=BEFORE, alpha=0.55, label=f"before: {fmt_count(b.size)} weights")
    if a_nz is not None and a_nz.size:
        ax.hist(a_nz, bins=bins, color=AFTER, alpha=0.75, label=f"after: {fmt_count(a_nz.size)} non-zero")
    ax.set_yscale("log")
    ax.set_xlabel("weight value")
    ax.set_ylabel("count (log scale)")
    ax.legend(loc="upper right", fontsize=8.5, framealpha=0.9, frameon=True)
    sub = "Values of all convolution / linear weights; pruning by magnitude empties the centre."
    return section("Weight histograms", image(figure_to_data_uri(fig), "weight histograms"), subtitle=sub)


@register_section("history", order=40, title="Accuracy per epoch")
def history_section(results: dict, ctx: dict) -> str | None:
    """Validation accuracy (and training loss) per epoch, stages shaded in turn."""
    rows = [r for r in results.get("history") or [] if isinstance(r, dict) and is_number(r.get("val_accuracy"))]
    if not rows:
        return None
    fig, ax = new_figure(9.0, 3.6)
    x = np.arange(1, len(rows) + 1)
    acc = np.array([r["val_accuracy"] for r in rows]) * 100
    stages = [str(r.get("stage", "")) for r in rows]
    for i, (start, end, name) in enumerate(_runs(stages)):
        if name:
            ax.axvspan(start + 0.5, end + 1.5, color=PALETTE[i % len(PALETTE)], alpha=0.07, lw=0)
            ax.text((start + end) / 2 + 1, 1.0, name, transform=ax.get_xaxis_transform(), ha="center", va="bottom",
                    fontsize=8.5, color="#4a5263")
    ax.plot(x, acc, marker="o", ms=3.5, color=AFTER, label="validation accuracy")
    ref = (results.get("before") or {}).get("accuracy")
    if is_number(ref):
        ax.axhline(100 * ref, color=BEFORE, ls="--", lw=1.2, label=f"before pruning ({100 * ref:.2f} %)")
        lo, hi = min(acc.min(), 100 * ref), max(acc.max(), 100 * ref)
        ax.set_ylim(lo - 0.06 * (hi - lo + 1e-9), hi + 0.1 * (hi - lo + 1e-9))  # keep the reference line inside
    ax.set_xlabel("epoch (all stages in order)")
    ax.set_ylabel("validation accuracy (%)")
    handles, labels = ax.get_legend_handles_labels()
    loss = [r.get("train_loss") for r in rows]
    if any(is_number(v) for v in loss):
        ax2 = ax.twinx()
        ax2.plot(x, [v if is_number(v) else np.nan for v in loss], color=PALETTE[1], ls=":", lw=1.3, label="training loss")
        ax2.set_ylabel("training loss")
        ax2.grid(False)
        ax2.spines["top"].set_visible(False)
        h2, l2 = ax2.get_legend_handles_labels()
        handles, labels = handles + h2, labels + l2
    ax.legend(handles, labels, loc="upper center", bbox_to_anchor=(0.5, -0.2), ncol=3, fontsize=8.5)
    best = max(rows, key=lambda r: r["val_accuracy"])
    sub = f"{len(rows)} epochs; best validation accuracy {100 * best['val_accuracy']:.2f} %" + (
        f" ({best['stage']}, epoch {best.get('epoch')})" if best.get("stage") else f" (epoch {best.get('epoch')})")
    return section("Accuracy per epoch", image(figure_to_data_uri(fig), "accuracy per epoch"), subtitle=sub)


def _runs(labels: List[str]) -> List[tuple]:
    """``[(first_index, last_index, label)]`` of consecutive equal labels."""
    out: List[tuple] = []
    for i, lab in enumerate(labels):
        if out and out[-1][2] == lab:
            out[-1] = (out[-1][0], i, lab)
        else:
            out.append((i, i, lab))
    return out
