"""Assemble docs/benchmarks.md from the per-benchmark records in docs/benchmarks/.

Each benchmark keeps its own record, ``docs/benchmarks/NAME.md`` (its numbers, the command
that reproduces them, the machine), owned by whoever runs it.  A record ends with two
sections this script reads:

``## Headline``
    a table ``| measure | command | target | result | status |`` with one row per target
    of the benchmark; ``status`` is ``met``, ``not met`` or ``open`` (not measured yet, or
    a measurement that did not complete).
``## Open problems``
    bullets (``- ...``), or the single line ``None.``

This page is ``docs/benchmarks/intro.md`` (prose only: no numbers), then the headline
table built from every record's rows, then every open problem (each record's bullets,
plus each row that is not ``met``), then the records themselves.  Nothing in the headline
is typed here, so it cannot disagree with the records, and an open problem cannot be left
out of it.  ``--check`` (run by ``tests/test_docs.py``) exits 1 when the page is stale and
2 when a record lacks its sections.

Run: ``.venv/bin/python bench/report.py`` (``--check`` to compare only).
"""

from __future__ import annotations

import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RECORDS = ROOT / "docs" / "benchmarks"
PARTS = ("validate", "probe", "pipelining", "fleet", "engine", "operator", "emulator")
OUT = ROOT / "docs" / "benchmarks.md"
INTRO = RECORDS / "intro.md"
COLUMNS = ("measure", "command", "target", "result", "status")
STATUSES = ("met", "not met", "open")


class RecordError(ValueError):
    """A record without a well-formed Headline or Open problems section."""


@dataclass(frozen=True)
class Row:
    measure: str
    command: str
    target: str
    result: str
    status: str


@dataclass
class Record:
    name: str
    title: str
    rows: list[Row] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


def _section(text: str, heading: str, name: str) -> list[str]:
    """The lines under ``## heading`` up to the next heading of level 1 or 2."""
    lines = text.splitlines()
    try:
        start = next(i for i, line in enumerate(lines) if line.strip() == f"## {heading}")
    except StopIteration:
        raise RecordError(f"docs/benchmarks/{name}.md has no '## {heading}' section") from None
    body = []
    for line in lines[start + 1:]:
        if re.match(r"#{1,2} ", line):
            break
        body.append(line)
    return body


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def parse(name: str, text: str) -> Record:
    title = next((line.lstrip("# ").strip() for line in text.splitlines()
                  if line.startswith("# ")), name)
    record = Record(name, title)
    table = [line for line in _section(text, "Headline", name) if line.startswith("|")]
    if len(table) < 3 or tuple(c.lower() for c in _cells(table[0])) != COLUMNS:
        raise RecordError(f"docs/benchmarks/{name}.md: '## Headline' needs a table "
                          f"| {' | '.join(COLUMNS)} | with at least one row")
    for line in table[2:]:
        cells = _cells(line)
        if len(cells) != len(COLUMNS) or cells[4].lower() not in STATUSES:
            raise RecordError(f"docs/benchmarks/{name}.md: headline row {line.strip()!r} "
                              f"needs {len(COLUMNS)} cells and a status in {STATUSES}")
        measure, command, target, result, status = cells
        record.rows.append(Row(measure, command, target, result, status.lower()))
    body = [line for line in _section(text, "Open problems", name) if line.strip()]
    if body == ["None."]:
        return record
    if not body or not body[0].startswith("- "):
        raise RecordError(f"docs/benchmarks/{name}.md: '## Open problems' needs bullets "
                          "('- ...') or the line 'None.'")
    for line in body:  # a bullet, or the continuation of the one before (indented)
        if line.startswith("- "):
            record.problems.append(line[2:].strip())
        else:
            record.problems[-1] += " " + line.strip()
    return record


def _anchor(title: str) -> str:
    """GitHub's heading anchor."""
    slug = re.sub(r"[^\w\- ]", "", title.lower()).replace(" ", "-")
    return f"#{slug}"


def _demote(text: str) -> str:
    """One heading level down, so each record nests under this page's title."""
    return re.sub(r"^(#+) ", lambda m: "#" + m.group(1) + " ", text, flags=re.M)


def load() -> list[tuple[Record, str]]:
    out = []
    for name in PARTS:
        text = (RECORDS / f"{name}.md").read_text()
        out.append((parse(name, text), text))
    return out


def render(records: list[tuple[Record, str]], intro: str) -> str:
    head = [intro.rstrip() + "\n",
            "| benchmark | measure | command | target | result | status |",
            "| --- | --- | --- | --- | --- | --- |"]
    problems = []
    for rec, _ in records:
        link = f"[{rec.name}]({_anchor(rec.title)})"
        for row in rec.rows:
            status = row.status if row.status == "met" else f"**{row.status}**"
            head.append(f"| {link} | {row.measure} | {row.command} | {row.target} "
                        f"| {row.result} | {status} |")
            if row.status != "met":
                problems.append(f"- **{rec.name}**: {row.measure}: {row.status} "
                                f"(target: {row.target}; result: {row.result})")
        problems += [f"- **{rec.name}**: {p}" for p in rec.problems]
    head += ["", "## Open problems", ""]
    head += problems or ["None: every headline target is met and no record lists a problem."]
    parts = ["\n".join(head) + "\n\n"]
    parts += [_demote(text.strip()) + "\n\n" for _, text in records]
    return "".join(parts).rstrip() + "\n"


def main(argv: list[str]) -> int:
    try:
        text = render(load(), INTRO.read_text())
    except RecordError as exc:
        print(f"bench/report.py: {exc}", file=sys.stderr)
        return 2
    if "--check" in argv:
        if OUT.exists() and OUT.read_text() == text:
            return 0
        print("docs/benchmarks.md is stale: run .venv/bin/python bench/report.py",
              file=sys.stderr)
        return 1
    OUT.write_text(text)
    print(f"wrote {OUT.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
