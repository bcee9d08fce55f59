"""Report: results.json and a self-contained report.html (inline CSS, embedded PNG plots) built from registered sections.

Add a section with ``@register_section("name", order=N)`` (or ``@REPORT_SECTIONS.register("name")``)
on ``fn(results, ctx) -> str | None``; build its HTML with :func:`prunekit.report.html.table`,
:func:`prunekit.report.html.section` and :func:`prunekit.report.plots.figure_to_data_uri`, and
return None when its data is absent.
"""
from . import sections  # noqa: F401  (registers the built-in sections: tables, plots, reduce, schedule, search)
from .base import REPORT_SECTIONS, register_section
from .plots import figure_to_data_uri
from .results import read_results, to_jsonable, write_results
from .writer import write_report

__all__ = [
    "REPORT_SECTIONS",
    "figure_to_data_uri",
    "read_results",
    "register_section",
    "to_jsonable",
    "write_report",
    "write_results",
]
