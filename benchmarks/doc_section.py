"""The generated sections of a docs page: a benchmark script rewrites its own section (between its begin and
end markers) and leaves the hand-written text around it alone."""

from __future__ import annotations

from pathlib import Path


def write_section(doc: Path, begin: str, end: str, section: str) -> None:
    """Replace the text from ``begin`` to ``end`` (and the line break after it) in ``doc`` with ``section``
    (which carries both markers); append it when the page has none yet."""
    text = doc.read_text()
    if begin in text:
        start, stop = text.index(begin), text.index(end) + len(end) + 1
        text = text[:start] + section + text[stop:]
    else:
        text = text.rstrip("\n") + "\n\n" + section
    doc.write_text(text)
    print(f"wrote {doc}")
