"""Report section ``compress``: the Deep-Compression size waterfall, as in the paper's tables.

One row per step (dense float32 → pruned → + weight sharing → + centroid fine-tune → + entropy coding → the
file): its bytes, how many times smaller than dense it is and its test accuracy (with the change vs dense),
then the shared layers (bits, kept weights, how positions and indices were coded).
"""
from __future__ import annotations

from typing import Optional

from ..base import register_section
from ..html import esc, numeric, section, table


def _bytes(x) -> object:
    return numeric(f"{x:,}") if isinstance(x, int) and not isinstance(x, bool) else None


def _times(x) -> object:
    return numeric(f"{x:.1f}×") if isinstance(x, (int, float)) and not isinstance(x, bool) else None


def _acc(acc, delta) -> object:
    if not isinstance(acc, (int, float)) or isinstance(acc, bool):
        return None
    text = f"{100 * acc:.2f} %"
    if isinstance(delta, (int, float)) and not isinstance(delta, bool):
        text += f" ({100 * delta:+.2f})"
    return numeric(text)


def waterfall_rows(info: dict) -> list:
    """The table rows of ``results["compress"]["waterfall"]`` (missing values show as a dash)."""
    return [{"step": row.get("label", row.get("step")), "bytes": _bytes(row.get("bytes")),
             "ratio": _times(row.get("ratio")), "acc": _acc(row.get("test_accuracy"), row.get("delta_vs_dense"))}
            for row in info.get("waterfall") or []]


COLUMNS = [("step", "step"), ("bytes", "bytes"), ("ratio", "× smaller than dense"),
           ("acc", "test accuracy (vs dense)")]
LAYER_COLUMNS = [("name", "layer"), ("bits", "bits"), ("kept", "kept weights"), ("pruned", "pruned bytes"),
                 ("shared", "shared bytes"), ("stored", "coded bytes"), ("coding", "positions / indices")]


def layer_rows(info: dict) -> list:
    rows = []
    for layer in info.get("layers") or []:
        kept, numel = layer.get("kept"), layer.get("numel")
        rows.append({"name": layer.get("name"), "bits": layer.get("bits"),
                     "kept": f"{kept:,} of {numel:,}" if isinstance(kept, int) and isinstance(numel, int) else kept,
                     "pruned": _bytes(layer.get("pruned")), "shared": _bytes(layer.get("shared")),
                     "stored": _bytes(layer.get("stored")),
                     "coding": f"{layer.get('positions')} + {layer.get('positions_codec')} / "
                               f"{layer.get('indices_codec')}"})
    return rows


@register_section("compress", order=46, title="Deep Compression")
def compress_section(results: dict, ctx: dict) -> Optional[str]:
    info = results.get("compress")
    if not info or not info.get("waterfall"):
        return None
    notes = []
    if isinstance(info.get("ratio"), (int, float)):
        notes.append(f"the file is {info['ratio']:.1f}× smaller than the dense float32 weights")
    ft = info.get("finetune") or {}
    if ft.get("epochs"):
        notes.append(f"centroids fine-tuned {ft['epochs']} epoch(s) on the training split"
                     + (", other parameters frozen" if ft.get("centroids_only") else ""))
    if info.get("verified"):
        notes.append("the file read back reproduces the model's test outputs exactly")
    body = table(waterfall_rows(info), COLUMNS)
    sizes = info.get("sizes") or {}
    if "dense_fp32_pruned_shape" in sizes:
        body += ("<p>Dense is the unpruned model; the structured-pruned layers alone are "
                 f"{sizes['dense_fp32_pruned_shape']:,} bytes as float32.</p>")
    rows = layer_rows(info)
    if rows:
        body += "<h3>Shared layers</h3>" + table(rows, LAYER_COLUMNS)
    if info.get("path"):
        body += f"<p>Written to <code>{esc(info['path'])}</code>.</p>"
    return section("Deep Compression", body, subtitle="; ".join(notes))
