"""Report writers: what turns measurements into documents (Markdown, plain-text tables, PNG plots).

Measuring lives elsewhere (:mod:`cspnet.profiling` counts and times); the modules here only
format and draw what they are given. Figures are drawn on :class:`matplotlib.figure.Figure`
objects, never through ``pyplot``, so no function here touches matplotlib's global backend.

* :mod:`cspnet.reports.tables`: the table formatters (Markdown and aligned plain text).
* :mod:`cspnet.reports.reproduction`: ``docs/reproduction.md`` and its plots (``cspnet reproduce``).
"""
