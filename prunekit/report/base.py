"""The report-section registry: ``section(results, ctx) -> HTML fragment | None``, rendered in ``order``."""
from __future__ import annotations

import logging
from typing import Callable, List, Optional

from ..registry import Registry
from .html import esc, section

log = logging.getLogger(__name__)

Section = Callable[[dict, dict], Optional[str]]

# Sections registered without an order go after the built-ins, by name. Built-ins use 10..60.
DEFAULT_ORDER = 100

REPORT_SECTIONS: Registry[Section] = Registry("report section")


def register_section(name: str, *, order: int = DEFAULT_ORDER, title: str | None = None):
    """Register a report section; ``order`` places it on the page, ``title`` names it in the contents bar.

    ``@REPORT_SECTIONS.register("name")`` works too (order ``DEFAULT_ORDER``, title from the name).
    """

    def deco(fn: Section) -> Section:
        fn.report_order = order  # type: ignore[attr-defined]
        fn.report_title = title or name.replace("_", " ").capitalize()  # type: ignore[attr-defined]
        REPORT_SECTIONS.add(name, fn)
        return fn

    return deco


def ordered_names() -> List[str]:
    return sorted(REPORT_SECTIONS.names(), key=lambda n: (getattr(REPORT_SECTIONS.get(n), "report_order", DEFAULT_ORDER), n))


def anchor_of(name: str) -> str:
    return "sec-" + "".join(ch if ch.isalnum() else "-" for ch in name.lower())


def render_sections(results: dict, ctx: dict, names: List[str] | None = None) -> List[tuple]:
    """``[(name, title, html)]`` of every section that has data; a failing section becomes a warning box."""
    out = []
    for name in names if names is not None else ordered_names():
        fn = REPORT_SECTIONS.get(name)
        title = getattr(fn, "report_title", name.replace("_", " ").capitalize())
        try:
            fragment = fn(results, ctx)
        except Exception as exc:  # one broken section must not cost the user the whole report
            log.warning("report section %r failed: %s", name, exc, exc_info=True)
            fragment = section(title, f'<p class="warn">This section could not be drawn: {esc(type(exc).__name__)}: {esc(exc)}</p>')
        if fragment:
            out.append((name, title, f'<div id="{anchor_of(name)}">{fragment}</div>'))
    return out
