"""The built-in report sections; importing this package registers them all in ``REPORT_SECTIONS``.

Sections read only ``results`` (the results.json dict): each returns None when its data is absent,
so a feature's section (reduce, schedule, search) costs nothing in a run that did not use it.
"""
from . import compress, latency, plots, quantize, reduce, schedule, search, tables  # noqa: F401  (registers the sections)
