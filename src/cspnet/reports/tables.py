"""The table formatters every report and command uses: Markdown, and aligned plain text."""

from __future__ import annotations

from collections.abc import Sequence


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A GitHub-flavoured Markdown table, one string per line.

    >>> print("\\n".join(markdown_table(["model", "GMACs"], [["densenet121", "2.834"]])))
    | model | GMACs |
    | --- | --- |
    | densenet121 | 2.834 |
    """
    return [
        "| " + " | ".join(header) + " |",
        "|" + "|".join(" --- " for _ in header) + "|",
        *("| " + " | ".join(row) + " |" for row in rows),
    ]


def aligned_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A plain-text table for a terminal: the first column left-aligned, the others right-aligned,
    a dashed rule under the header; one string per line.

    >>> print("\\n".join(aligned_table(["part", "GMACs"], [["stem", "0.118"], ["stages.0", "0.4"]])))
    part      GMACs
    --------  -----
    stem      0.118
    stages.0    0.4
    """
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]

    def line(row: Sequence[str]) -> str:
        return "  ".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, w) in enumerate(zip(row, widths)))

    return [line(header), line(["-" * w for w in widths]), *(line(row) for row in rows)]
