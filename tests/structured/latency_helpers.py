"""What the latency-table tests share: a fake timer whose times follow the widths."""
from __future__ import annotations


class WidthTimer:
    """Stands in for interleaved_median: runs every candidate once (they must run) and reports a time proportional to
    the width a grid candidate is labelled with (a layer costs in_width x out_width / 64^2 ms, as its MACs do); the
    dense model and layers in the calibration round take 1 ms per layer, so nothing else (no rest) is left over."""

    def __init__(self):
        self.calls = 0

    def __call__(self, label, candidates, **kw):
        self.calls += 1
        for fn in candidates.values():
            fn()
        out = {k: int(k) / 64 if k.isdigit() else 0.0 for k in candidates}
        if "model" in candidates:
            out = {k: 1.0 for k in candidates}
            out["model"] = float(len(candidates) - 1)
        return out
