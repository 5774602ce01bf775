"""Tables copied into the docs equal the files their scripts write: a copy marked
``<!-- figures/<name>.md, written by ... -->`` must be that file's table, line for line, so a rerun of the
script that changes a number fails here until the copy is re-synced (`python tests/test_docs_tables.py`
rewrites every marked copy). The table is the file's first block of ``|`` lines: a sentence the script
writes below it (a provenance line) stays in the file, and the doc says it in its own words."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MARKER = re.compile(r"^<!-- (figures/[\w/.-]+\.md)\b")


def table_end(lines: list[str], start: int) -> int:
    """The line after the block of table lines (``|``) that starts at ``start``."""
    end = start
    while end < len(lines) and lines[end].startswith("|"):
        end += 1
    return end


def marked_copies(text: str) -> list[tuple[str, int, int]]:
    """(source file, first table line, line after the table) for each marked copy in ``text``."""
    lines, out = text.splitlines(), []
    for i, line in enumerate(lines):
        found = MARKER.match(line)
        if not found:
            continue
        j = i + 1
        while j < len(lines) and not lines[j].startswith("|"):  # the marker comment may span lines
            j += 1
        out.append((found.group(1), j, table_end(lines, j)))
    return out


def source_table(text: str) -> list[str]:
    """The first block of table lines (``|``) in a written file."""
    lines = text.splitlines()
    start = next((i for i, line in enumerate(lines) if line.startswith("|")), len(lines))
    return lines[start : table_end(lines, start)]


DOCS = sorted((REPO / "docs").glob("*.md"))
COPIES = [(doc, *c) for doc in DOCS for c in marked_copies(doc.read_text())]


def test_marker_parsing_by_hand():
    text = "intro\n<!-- figures/a.md, written by x\nmore -->\n| h |\n|---|\n| 1 |\nafter\n"
    assert marked_copies(text) == [("figures/a.md", 3, 6)]
    written = "| h |\n|---|\n| 1 |\n\nTrained from: abc1234 (a clean tree).\n"
    assert source_table(written) == ["| h |", "|---|", "| 1 |"]


@pytest.mark.parametrize("doc,source,start,end", COPIES, ids=[f"{d.name}:{s}" for d, s, _, _ in COPIES])
def test_copied_table_equals_its_source(doc, source, start, end):
    copy = doc.read_text().splitlines()[start:end]
    assert copy == source_table((REPO / source).read_text()), (
        f"{doc.name}'s copy of {source} is out of date: run `python tests/test_docs_tables.py` to re-sync it."
    )


def resync() -> None:
    for doc in DOCS:
        lines = doc.read_text().splitlines()
        for source, start, end in reversed(marked_copies("\n".join(lines))):
            lines[start:end] = source_table((REPO / source).read_text())
        doc.write_text("\n".join(lines) + "\n")
        print("re-synced", doc.relative_to(REPO))


if __name__ == "__main__":
    resync()
