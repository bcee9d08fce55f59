"""ExportError (it lives in prunekit.errors; re-exported here) and the one-paragraph form of an exporter's error."""
from __future__ import annotations

import re

from ..errors import ExportError

__all__ = ["ExportError"]

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _short(exc: BaseException, limit: int = 600) -> str:
    """A one-paragraph version of an exporter's (often page-long) error."""
    text = _ANSI.sub("", str(exc))
    lines = [ln.rstrip() for ln in text.splitlines()]
    parts = []
    if "## Exception summary" in text:  # torch.onnx's dynamo exporter report
        i = lines.index(next(ln for ln in lines if ln.startswith("## Exception summary")))
        summary = next((ln.strip() for ln in lines[i + 1:] if ln.strip()), "")
        parts.append(summary)
    else:
        parts.append(next((ln.strip() for ln in lines if ln.strip()), type(exc).__name__))
    if "The following call raised this error:" in text:
        i = lines.index("The following call raised this error:")
        parts.append("raised at " + " ".join(ln.strip() for ln in lines[i + 1:i + 3] if ln.strip()))
    out = f"{type(exc).__name__}: " + " ".join(parts)
    return out if len(out) <= limit else out[:limit - 3] + "..."
