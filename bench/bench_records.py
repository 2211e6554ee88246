"""Where a benchmark writes its record: the generated block of a ``docs/benchmarks/*.md``.

A record file holds one generated block between ``<!-- bench-NAME:begin -->`` and
``<!-- bench-NAME:end -->``; the analysis written around it by hand is kept.  A file
without the markers gets the block appended.
"""

from __future__ import annotations

from pathlib import Path


def markers(name: str) -> tuple[str, str]:
    """The begin and end markers of benchmark ``name``'s generated block."""
    return f"<!-- bench-{name}:begin -->", f"<!-- bench-{name}:end -->"


def write_block(path: Path, name: str, text: str) -> None:
    """Replace the generated block of ``path`` (keeping the analysis around it)."""
    begin, end = markers(name)
    old = path.read_text() if path.exists() else f"{begin}\n{end}\n"
    if begin not in old or end not in old:
        old = old.rstrip("\n") + f"\n\n{begin}\n{end}\n"
    head, rest = old.split(begin, 1)
    tail = rest.split(end, 1)[1]
    path.write_text(f"{head}{begin}\n{text}\n{end}{tail}")
